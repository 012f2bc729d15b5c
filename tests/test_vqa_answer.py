"""`vlbert answer`: stored regions, regions extracted on the fly with the training detector, and refusals."""
import json
from pathlib import Path

import numpy as np
import pytest

from tiny import tiny_config
from vlbert.cli import main as vlbert
from vlbert.data.tokenizer import load_tokenizer
from vlbert.featstore import FeatureStore, read_header
from vlbert import VLBertForVQA
from vlbert.modeling.vqa import with_answers
from vlbert.tasks.vqa.answer import detect_regions
from vlbert.training.export import write_model_directory

REPO = Path(__file__).resolve().parents[1]
ANSWERS = ["yes", "no", "red", "2", "circle"]


def header_of(path):
    header = read_header(path)
    return {k: header[k] for k in ("feature_dim", "num_classes", "provenance")}


def model_dir(tmp_path, world, feature_file, feature_dim):
    out = tmp_path / "model"
    model = VLBertForVQA(with_answers(tiny_config(region_feature_dim=feature_dim), ANSWERS))
    write_model_directory(out, model, load_tokenizer(world.tokenizer_dir), header_of(feature_file),
                          {"vqa.json": {"max_regions": 10, "max_text_len": 20}})
    return out


def test_answers_from_stored_regions(tiny_world, tmp_path, capsys):
    model = model_dir(tmp_path, tiny_world, tiny_world.features_path, 64)
    image_id = str(tiny_world.image_ids("test")[0])
    common = ["answer", "--model", str(model), "--features", str(tiny_world.features_path), "--image-id", image_id,
              "--question", "is there a red circle?", "--question", "how many squares are there?"]
    assert vlbert([*common, "--top-k", "3", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [a["question"] for a in printed["answers"]] == ["is there a red circle?", "how many squares are there?"]
    for entry in printed["answers"]:
        scores = [t["score"] for t in entry["top"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
        assert all(t["answer"] in ANSWERS for t in entry["top"])
    assert vlbert(common) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "is there a red circle?" and len(lines) == 2 * (1 + 5)


def test_refusals_name_the_problem(tiny_world, tmp_path, capsys):
    model = model_dir(tmp_path, tiny_world, tiny_world.features_path, 64)
    image = tiny_world.image_path(tiny_world.image_ids("test")[0])
    assert vlbert(["answer", "--model", str(model), "--image", str(image), "--question", "what?"]) == 1
    assert "synthetic-world features" in capsys.readouterr().err
    assert vlbert(["answer", "--model", str(model), "--features", str(tiny_world.features_path), "--image-id", "nope",
                   "--question", "what?"]) == 1
    assert "image 'nope' has no features" in capsys.readouterr().err
    assert vlbert(["answer", "--model", str(tmp_path), "--features", str(tiny_world.features_path), "--image-id", "1",
                   "--question", "what?"]) == 1
    assert "is not a model directory (no config.json)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        vlbert(["answer", "--model", str(model), "--question", "what?"])   # neither --image nor --features


def test_on_the_fly_regions_match_the_training_extraction(tiny_world, tmp_path, capsys):
    """Features extracted by `vlbert extract` (tiny random-weight detector) and those `vlbert
    answer` extracts for the same image with the settings read back from the model directory."""
    from vlbert.features.config import load_config
    from vlbert.features.extract import extract

    images = tmp_path / "images"
    images.mkdir()
    image_id = tiny_world.image_ids("val")[0]
    (images / f"{image_id}.png").write_bytes(tiny_world.image_path(image_id).read_bytes())
    extract(images, tmp_path / "feats.h5", load_config(REPO / "configs/extract/tiny.yaml"), progress=False)
    stored = FeatureStore(tmp_path / "feats.h5")[str(image_id)]
    model = model_dir(tmp_path, tiny_world, tmp_path / "feats.h5", stored.features.shape[1])
    provenance = json.loads((model / "features.json").read_text())["provenance"]
    features, boxes, width, height, _ = detect_regions(images / f"{image_id}.png", provenance, None, "cpu")
    assert (width, height) == (stored.image_w, stored.image_h)
    np.testing.assert_allclose(boxes, stored.boxes, atol=1e-3)
    np.testing.assert_allclose(features, stored.features.astype(np.float32), rtol=1e-2, atol=1e-2)  # stored as float16
    assert vlbert(["answer", "--model", str(model), "--image", str(images / f"{image_id}.png"), "--question", "is it red?"]) == 0
    assert capsys.readouterr().out.startswith("is it red?\n")
    # Features from a detector weights file: it must be given, and be the same file.
    provenance["weights"] = {"source": "file", "file": "detector.pth", "sha256": "0" * 64}
    (model / "features.json").write_text(json.dumps({"feature_dim": 1024, "num_classes": 91, "provenance": provenance}))
    ask = ["answer", "--model", str(model), "--image", str(images / f"{image_id}.png"), "--question", "x"]
    assert vlbert(ask) == 1
    assert "'detector.pth', which are not stored with the model; pass the file with --detector-weights" in capsys.readouterr().err
    (tmp_path / "detector.pth").write_bytes(b"other weights")
    assert vlbert([*ask, "--detector-weights", str(tmp_path / "detector.pth")]) == 1
    assert "differs from the one that made the model's training features in: weights.sha256" in capsys.readouterr().err
    # Stored regions from a differently made feature file are refused too.
    assert vlbert(["answer", "--model", str(model), "--features", str(tmp_path / "feats.h5"), "--image-id", str(image_id),
                   "--question", "x"]) == 1
    assert "was made differently from the model's training features (weights" in capsys.readouterr().err
