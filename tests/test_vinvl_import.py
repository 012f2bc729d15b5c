"""`vlbert import-tsv --format vinvl`: files laid out as VinVL / Oscar write them, imported array by array."""
import base64
import re
import json
from pathlib import Path

import numpy as np
import pytest

from vlbert.cli import main as vlbert
from vlbert.featstore import FeatureStore
from vlbert.features.tsv import TsvError
from vlbert.features.vinvl import import_vinvl

DIM = 2048  # the X152-C4 region feature; each VinVL row adds 6 box values
CLASSES = ["dog", "cat", "frisbee", "tree"]
ATTRIBUTES = ["brown", "flying", "green"]


def make_images(count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        n, w, h = int(rng.integers(1, 6)), int(rng.integers(200, 640)), int(rng.integers(200, 480))
        x1, y1 = rng.uniform(0, w / 2, n), rng.uniform(0, h / 2, n)
        rects = np.stack([x1, y1, x1 + rng.uniform(5, w / 2, n), y1 + rng.uniform(5, h / 2, n)], 1).astype(np.float32)
        objects = []
        for row in range(n):
            k = int(rng.integers(0, 3))
            objects.append({"rect": rects[row].tolist(), "bbox_id": row, "class": CLASSES[int(rng.integers(0, 4))],
                            "conf": float(rng.uniform(0.2, 1)), "attributes": list(rng.choice(ATTRIBUTES, k, False)),
                            "attr_scores": rng.uniform(0, 1, k).tolist()})
        images.append({"key": f"COCO_val2014_{i:012d}", "w": w, "h": h, "objects": objects, "rects": rects,
                       "features": rng.normal(size=(n, DIM)).astype(np.float32)})
    return images


def box_values(image: dict, height_first: bool = False) -> np.ndarray:
    """VinVL's 6 box values of each row: the rect over the image size, then its width and height."""
    scale = np.array([image["w"], image["h"]] * 2, np.float32)
    xyxy = np.clip(image["rects"] / scale, 0, 1)
    sizes = [xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]]
    return np.hstack([xyxy, np.stack(sizes[::-1] if height_first else sizes, 1)]).astype(np.float32)


def write_features(path: Path, images: list[dict], layout: str, height_first: bool = False) -> Path:
    lines = []
    for image in images:
        rows = np.hstack([image["features"], box_values(image, height_first)]).astype(np.float32)
        encoded = base64.b64encode(rows.tobytes()).decode("utf-8")
        if layout == "json":  # Oscar's task data
            lines.append(f"{image['key']}\t{json.dumps({'num_boxes': len(rows), 'features': encoded})}")
        elif layout == "count":  # the COCO image_features release
            lines.append(f"{image['key']}\t{len(rows)}\t{encoded}")
        else:
            lines.append(f"{image['key']}\t{encoded}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_tsv_with_lineidx(path: Path, lines: list[str]) -> Path:
    """As VinVL's tsv_writer does: the TSV and <stem>.lineidx with each line's byte offset."""
    offsets, position = [], 0
    for line in lines:
        offsets.append(position)
        position += len((line + "\n").encode("utf-8"))
    path.write_text("".join(line + "\n" for line in lines))
    path.with_suffix(".lineidx").write_text("".join(f"{o}\n" for o in offsets))
    return path


def write_predictions(path: Path, images: list[dict], with_size: bool = True) -> Path:
    lines = []
    for image in reversed(images):  # another order than the features: found by key
        data = {"objects": image["objects"]}
        if with_size:
            data.update(image_h=image["h"], image_w=image["w"])
        lines.append(f"{image['key']}\t{json.dumps(data)}")
    return write_tsv_with_lineidx(path, lines)


def expected_attribute(obj: dict, names: list[str]) -> tuple[int, float]:
    if not obj["attributes"]:
        return -1, 0.0
    best = int(np.argmax(obj["attr_scores"]))
    return names.index(obj["attributes"][best]), obj["attr_scores"][best]


def assert_imported(store: FeatureStore, images: list[dict], class_names: list[str], attribute_names: list[str]):
    assert store.feature_dim == DIM and store.class_names == class_names and store.attribute_names == attribute_names
    assert sorted(store.ids) == sorted(image["key"] for image in images)
    for image in images:
        record = store[image["key"]]
        assert record.features.tobytes() == image["features"].tobytes()  # float32: bit-exact
        assert record.boxes.tobytes() == image["rects"].tobytes()
        assert (record.image_w, record.image_h) == (image["w"], image["h"])
        assert [class_names[i] for i in record.labels] == [o["class"] for o in image["objects"]]
        np.testing.assert_array_equal(record.scores, np.float32([o["conf"] for o in image["objects"]]))
        expected = [expected_attribute(o, attribute_names) for o in image["objects"]]
        np.testing.assert_array_equal(record.attributes, [a for a, _ in expected])
        np.testing.assert_array_equal(record.attribute_scores, np.float32([s for _, s in expected]))


@pytest.mark.parametrize("layout", ["plain", "json", "count"])
def test_each_features_layout_with_predictions_imports_every_array(tmp_path, layout):
    images = make_images(5, seed=1)
    features = write_features(tmp_path / "features.tsv", images, layout, height_first=layout == "json")
    predictions = write_predictions(tmp_path / "predictions.tsv", images)
    assert import_vinvl(features, tmp_path / "out.h5", predictions, dtype="float32") == 5
    seen = sorted({o["class"] for i in images for o in i["objects"]})
    seen_attributes = sorted({a for i in images for o in i["objects"] for a in o["attributes"]})
    assert_imported(FeatureStore(tmp_path / "out.h5"), images, seen, seen_attributes)


def test_a_labelmap_gives_the_detector_ids_and_label_tsv_naming_works(tmp_path, capsys):
    images = make_images(3, seed=2)
    features = write_features(tmp_path / "test.feature.tsv", images, "json")
    labels = write_tsv_with_lineidx(tmp_path / "test.label.tsv",  # Oscar's label.tsv: the list of objects
                                    [f"{i['key']}\t{json.dumps(i['objects'])}" for i in images])
    labelmap = tmp_path / "labelmap.json"
    labelmap.write_text(json.dumps({"label_to_idx": {n: i + 1 for i, n in enumerate(CLASSES)},
                                    "attribute_to_idx": {n: i + 1 for i, n in enumerate(ATTRIBUTES)}}))
    hw = tmp_path / "test.hw.tsv"
    hw.write_text("".join(f"{i['key']}\t{json.dumps([{'height': i['h'], 'width': i['w']}])}\n" for i in images))
    out = tmp_path / "out.h5"
    assert vlbert(["import-tsv", "--format", "vinvl", str(features), "--predictions", str(labels), "--labelmap",
                   str(labelmap), "--image-sizes", str(hw), "--dtype", "float32", "--output", str(out)]) == 0, \
        capsys.readouterr().err
    assert_imported(FeatureStore(out), images, ["__background__", *CLASSES], ["__no_attribute__", *ATTRIBUTES])


def test_features_alone_keep_the_normalised_boxes_exactly(tmp_path):
    images = make_images(3, seed=3)
    features = write_features(tmp_path / "features.tsv", images, "plain")
    import_vinvl(features, tmp_path / "out.h5", dtype="float32")
    store = FeatureStore(tmp_path / "out.h5")
    assert store.class_names is None and store.num_classes == 0
    for image in images:
        record = store[image["key"]]
        assert (record.image_w, record.image_h) == (1024, 1024)
        assert (record.boxes / np.float32(1024)).tobytes() == box_values(image)[:, :4].tobytes()
        assert record.labels is None and record.scores is None


def damaged(tmp_path: Path, change) -> tuple[Path, Path]:
    images = make_images(3, seed=4)
    features = write_features(tmp_path / "features.tsv", images, "json")
    change(images)
    return features, write_predictions(tmp_path / "predictions.tsv", images)


def shift_rect(images):
    images[1]["objects"][0]["rect"][0] += 5


def drop_object(images):
    images[2]["objects"].append(dict(images[2]["objects"][0]))


@pytest.mark.parametrize("change, message", [
    (shift_rect, r"features\.tsv:2: image 'COCO_val2014_000000000001': the rect of object 0 .* is 5\.0 px from"),
    (drop_object, r"features\.tsv:3: .*the predictions have \d+ objects but the features \d+ rows"),
])
def test_predictions_that_do_not_match_the_features_are_refused(tmp_path, change, message, capsys):
    features, predictions = damaged(tmp_path, change)
    out = tmp_path / "out.h5"
    assert vlbert(["import-tsv", "--format", "vinvl", str(features), "--predictions", str(predictions),
                   "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err
    assert not out.exists() and not out.with_name("out.h5.tmp").exists()


def test_a_stale_lineidx_and_rows_without_box_values_are_refused(tmp_path):
    images = make_images(2, seed=5)
    features = write_features(tmp_path / "features.tsv", images, "plain")
    predictions = write_predictions(tmp_path / "predictions.tsv", images)
    predictions.with_suffix(".lineidx").write_text("0\n7\n")
    with pytest.raises(TsvError, match=r"predictions\.lineidx: offset 7 is not the start of a line"):
        import_vinvl(features, tmp_path / "a.h5", predictions)
    rows = np.ones((2, DIM + 6), np.float32) * 3  # last 6 values are not a box in [0, 1]
    (tmp_path / "bad.tsv").write_text(f"k\t{base64.b64encode(rows.tobytes()).decode()}\n")
    with pytest.raises(TsvError, match=r"bad\.tsv:1: image 'k': the last 6 values of the rows are not normalised"):
        import_vinvl(tmp_path / "bad.tsv", tmp_path / "b.h5")
    predictions.with_suffix(".lineidx").unlink()
    write_predictions(predictions, images, with_size=False)
    predictions.with_suffix(".lineidx").unlink()  # found by a scan of the file instead
    with pytest.raises(TsvError, match=r"no image_w / image_h; give the image sizes with --image-sizes"):
        import_vinvl(features, tmp_path / "c.h5", predictions)
