"""The synthetic world: determinism, official formats, pixels vs. boxes, features, tokenizer, CLI, refusal."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlbert.data.tokenizer import load_tokenizer
from vlbert.featstore import FeatureStore
from vlbert.synth import SPLITS, generate_world, open_world
from vlbert.synth.cli import main as synth_main
from vlbert.synth.features import ATTRIBUTE_DIM
from vlbert.synth.language import LEXICON, words
from vlbert.synth.scene import COLORS, class_id, num_classes

N = 30


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("w") / "world", seed=3, num_images=N, feature_dim=32)


def _json_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.suffix in (".json", ".jsonl", ".txt")
    }


def test_same_seed_is_identical_and_other_seed_differs(world, tmp_path):
    again = generate_world(tmp_path / "again", seed=3, num_images=N, feature_dim=32)
    assert _json_files(world.root) == _json_files(again.root)
    for image_id in world.image_ids():
        a = np.asarray(Image.open(world.image_path(image_id)))
        b = np.asarray(Image.open(again.image_path(image_id)))
        assert np.array_equal(a, b)
    s1, s2 = FeatureStore(world.features_path), FeatureStore(again.features_path)
    for image_id in world.image_ids():
        r1, r2 = s1[image_id], s2[image_id]
        assert np.array_equal(r1.features, r2.features) and np.array_equal(r1.class_probs, r2.class_probs)

    other = generate_world(tmp_path / "other", seed=4, num_images=N, feature_dim=32)
    assert world.karpathy_json.read_bytes() != other.karpathy_json.read_bytes()
    assert world.boxes_json.read_bytes() != other.boxes_json.read_bytes()
    first = world.image_ids()[0]
    assert not np.array_equal(
        np.asarray(Image.open(world.image_path(first))), np.asarray(Image.open(other.image_path(first)))
    )
    # the vocabulary is a fixed lexicon: the same for every seed
    assert (world.tokenizer_dir / "vocab.txt").read_text() == (other.tokenizer_dir / "vocab.txt").read_text()


def test_splits_and_ids(world):
    ids = {s: world.image_ids(s) for s in SPLITS}
    assert [len(ids[s]) for s in SPLITS] == [24, 3, 3]
    all_ids = sum(ids.values(), [])
    assert len(set(all_ids)) == N
    assert sorted(int(p.stem) for p in world.images_dir.glob("*.png")) == sorted(all_ids)
    assert open_world(world.root).split_ids == world.split_ids


def test_caption_files(world):
    for split in SPLITS:
        rows = [json.loads(line) for line in world.captions(split).read_text().splitlines()]
        assert {r["image_id"] for r in rows} == set(world.image_ids(split))
        assert all(isinstance(r["image_id"], int) and r["caption"] for r in rows)
        assert len(rows) == 5 * len(world.image_ids(split))
        coco = json.loads(world.coco_captions(split).read_text())
        assert set(coco["images"][0]) >= {"id", "file_name", "width", "height"}
        assert set(coco["annotations"][0]) >= {"id", "image_id", "caption"}
        assert len({a["id"] for a in coco["annotations"]}) == len(rows)
        assert [a["caption"] for a in coco["annotations"]] == [r["caption"] for r in rows]
    for image_id in world.image_ids():  # five distinct captions per image
        caps = [json.loads(l)["caption"] for s in SPLITS for l in world.captions(s).read_text().splitlines()
                if json.loads(l)["image_id"] == image_id]
        assert len(set(caps)) == 5


def test_vqa_official_format(world):
    types = set()
    for split in SPLITS:
        questions = json.loads(world.vqa_questions(split).read_text())
        annotations = json.loads(world.vqa_annotations(split).read_text())
        assert {"info", "task_type", "data_type", "license", "data_subtype", "questions"} <= set(questions)
        assert questions["task_type"] == "Open-Ended" and questions["data_subtype"] == split
        assert {"info", "license", "data_subtype", "annotations"} <= set(annotations)
        qids = [q["question_id"] for q in questions["questions"]]
        assert qids == [a["question_id"] for a in annotations["annotations"]] and len(set(qids)) == len(qids)
        per_image: dict[int, int] = {}
        for q, a in zip(questions["questions"], annotations["annotations"]):
            assert q["image_id"] == a["image_id"] and q["question"].endswith("?")
            per_image[q["image_id"]] = per_image.get(q["image_id"], 0) + 1
            assert len(a["answers"]) == 10
            assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
            assert all(set(x) == {"answer", "answer_confidence", "answer_id"} for x in a["answers"])
            raw = [x["answer"] for x in a["answers"]]
            assert raw.count(a["multiple_choice_answer"]) == max(raw.count(r) for r in raw) >= 7
            assert a["answer_type"] in {"yes/no", "number", "other"}
            assert q["question"].startswith(a["question_type"])
            types.add(a["question_type"])
        assert set(per_image) == set(world.image_ids(split))
        assert all(4 <= n <= 6 for n in per_image.values())
    assert {"what color is the", "how many", "is there a"} <= types


def test_vqa_answers_are_true(world):
    scenes = {s["image_id"]: s for s in json.loads(world.scenes_json.read_text())["scenes"]}
    annotations = {}
    for split in SPLITS:
        for a in json.loads(world.vqa_annotations(split).read_text())["annotations"]:
            annotations[a["question_id"]] = a
        for q in json.loads(world.vqa_questions(split).read_text())["questions"]:
            objects = scenes[q["image_id"]]["objects"]
            answer = annotations[q["question_id"]]["multiple_choice_answer"]
            text = q["question"]
            if text.startswith("is there a "):
                color, shape = text[len("is there a "):-1].split()
                expected = "yes" if any(o["color"] == color and o["shape"] == shape for o in objects) else "no"
                assert answer == expected, text
            elif text == "how many shapes are there?":
                assert answer == str(len(objects))


def test_disagreement_exists(world):
    answers = [
        [x["answer"] for x in a["answers"]]
        for s in SPLITS
        for a in json.loads(world.vqa_annotations(s).read_text())["annotations"]
    ]
    assert any(len(set(r)) > 1 for r in answers)
    assert any(len(set(r)) == 1 for r in answers)


def test_karpathy_format(world):
    data = json.loads(world.karpathy_json.read_text())
    assert data["dataset"] == "synth" and len(data["images"]) == N
    sentids = []
    for k, img in enumerate(data["images"]):
        assert {"filename", "imgid", "cocoid", "split", "sentids", "sentences"} <= set(img)
        assert img["imgid"] == k and img["filename"] == f"{img['cocoid']}.png" and img["split"] in SPLITS
        assert img["cocoid"] in world.image_ids(img["split"])
        assert len(img["sentences"]) == 5 and img["sentids"] == [s["sentid"] for s in img["sentences"]]
        for s in img["sentences"]:
            assert s["imgid"] == k and s["tokens"] == words(s["raw"])
        sentids += img["sentids"]
    assert sorted(sentids) == list(range(5 * N))


def test_boxes_match_pixels(world):
    boxes = json.loads(world.boxes_json.read_text())
    scenes = json.loads(world.scenes_json.read_text())["scenes"]
    assert set(boxes) == {str(i) for i in world.image_ids()}
    checked = 0
    for scene in scenes:
        pixels = np.asarray(Image.open(world.image_path(scene["image_id"])).convert("RGB"))
        assert pixels.shape == (world.image_size, world.image_size, 3)
        assert boxes[str(scene["image_id"])] == [o["box"] for o in scene["objects"]]
        assert 2 <= len(scene["objects"]) <= 6
        for obj in scene["objects"]:
            x1, y1, x2, y2 = obj["box"]
            assert 0 <= x1 < x2 <= world.image_size and 0 <= y1 < y2 <= world.image_size
            cx, cy = (x1 + x2 - 1) // 2, (y1 + y2 - 1) // 2
            assert tuple(pixels[cy, cx]) == COLORS[obj["color"]]
            # every pixel of the colour lies inside the box (objects never overlap)
            if obj["shape"] == "square":
                assert (pixels[y1:y2, x1:x2] == COLORS[obj["color"]]).all()
                checked += 1
        # outside all boxes is background
        mask = np.ones(pixels.shape[:2], dtype=bool)
        for x1, y1, x2, y2 in boxes[str(scene["image_id"])]:
            mask[y1:y2, x1:x2] = False
        assert (pixels[mask] == scene["background"]).all()
    assert checked > 0


def test_features_store(world):
    store = FeatureStore(world.features_path)
    assert store.feature_dim == 32 and store.num_classes == num_classes() == world.num_classes
    assert store.provenance["backend"] == "synthetic" and store.provenance["seed"] == 3
    store.check_ids(world.image_ids())
    scenes = json.loads(world.scenes_json.read_text())["scenes"]
    correct = total = 0
    for scene in scenes:
        record = store[scene["image_id"]]
        n = len(scene["objects"])
        assert record.features.shape == (n + 2, 32) and record.boxes.shape == (n + 2, 4)
        assert record.class_probs.shape == (n + 2, num_classes())
        assert np.allclose(record.class_probs.sum(1), 1, atol=1e-2)
        labels = [class_id(o["color"], o["shape"]) for o in scene["objects"]] + [0, 0]
        assert record.labels.tolist() == labels
        assert record.boxes[:n].tolist() == [o["box"] for o in scene["objects"]]
        assert record.boxes[n].tolist() == [0, 0, world.image_size, world.image_size]
        assert (record.image_w, record.image_h) == (world.image_size, world.image_size)
        correct += int((record.class_probs.argmax(1) == record.labels).sum())
        total += n + 2
    assert 0.7 < correct / total < 1.0  # peaked at the truth, but noisy


def test_features_carry_attributes(world):
    """A linear probe recovers colour from the features far above chance; noise keeps them inexact."""
    store = FeatureStore(world.features_path)
    scenes = json.loads(world.scenes_json.read_text())["scenes"]
    colors = list(COLORS)
    x, y = [], []
    for scene in scenes:
        feats = store[scene["image_id"]].features
        for k, obj in enumerate(scene["objects"]):
            x.append(feats[k])
            y.append(colors.index(obj["color"]))
    x, y = np.array(x), np.array(y)
    targets = np.eye(len(colors))[y]
    w, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))], targets, rcond=None)
    accuracy = ((np.c_[x, np.ones(len(x))] @ w).argmax(1) == y).mean()
    assert accuracy > 0.9
    assert ATTRIBUTE_DIM < 32


def test_tokenizer_covers_all_text(world):
    tokenizer = load_tokenizer(world.tokenizer_dir)
    texts = [json.loads(l)["caption"] for s in SPLITS for l in world.captions(s).read_text().splitlines()]
    for s in SPLITS:
        texts += [q["question"] for q in json.loads(world.vqa_questions(s).read_text())["questions"]]
        texts += [x["answer"] for a in json.loads(world.vqa_annotations(s).read_text())["annotations"] for x in a["answers"]]
    ids = tokenizer(texts)["input_ids"]
    assert [t for t, row in zip(texts, ids) if tokenizer.unk_token_id in row] == []
    assert {w for t in texts for w in words(t)} <= LEXICON
    # whole words, not word pieces
    assert tokenizer.tokenize("what color is the shape to the left of the red square?")[:3] == ["what", "color", "is"]


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "cli"
    assert synth_main(["--out", str(out), "--seed", "1", "--num-images", "20", "--image-size", "64",
                       "--feature-dim", "16", "--split", "0.5,0.25,0.25"]) == 0
    world = open_world(out)
    assert world.image_size == 64 and world.has_features
    assert [len(world.image_ids(s)) for s in SPLITS] == [10, 5, 5]
    assert FeatureStore(world.features_path).feature_dim == 16
    assert Image.open(world.image_path(world.image_ids()[0])).size == (64, 64)
    # same settings again: allowed, identical output
    before = _json_files(out)
    assert synth_main(["--out", str(out), "--seed", "1", "--num-images", "20", "--image-size", "64",
                       "--feature-dim", "16", "--split", "0.5,0.25,0.25"]) == 0
    assert _json_files(out) == before
    # without features
    out2 = tmp_path / "nofeat"
    assert synth_main(["--out", str(out2), "--num-images", "10", "--no-features"]) == 0
    assert not (out2 / "features.h5").exists() and not open_world(out2).has_features


def test_refuses_foreign_files(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="holds no synthetic world"):
        generate_world(foreign, num_images=10)
    assert synth_main(["--out", str(foreign), "--num-images", "10", "--overwrite"]) == 1
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert "refusing" in capsys.readouterr().err

    world = generate_world(tmp_path / "w", seed=0, num_images=20, feature_dim=8)
    with pytest.raises(FileExistsError, match="other settings"):
        generate_world(world.root, seed=1, num_images=20, feature_dim=8)
    # a features.h5 not written by these settings (e.g. real detector features) is never replaced silently
    world.features_path.write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="features.h5"):
        generate_world(world.root, seed=0, num_images=20, feature_dim=8)
    assert world.features_path.read_bytes() == b"not ours"
    # --overwrite replaces our own world with other settings, dropping its surplus images
    smaller = generate_world(world.root, seed=1, num_images=10, feature_dim=8, overwrite=True)
    assert len(list(smaller.images_dir.glob("*.png"))) == 10
    assert FeatureStore(smaller.features_path).provenance["seed"] == 1


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        generate_world(tmp_path / "a", num_images=10, image_size=16)
    with pytest.raises(ValueError, match="split"):
        generate_world(tmp_path / "b", num_images=5, split_fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="empty"):
        generate_world(tmp_path / "c", num_images=3)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
