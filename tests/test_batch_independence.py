"""A record's features do not depend on which images share its batch, for every backend.

Mixed image sizes, extracted with batch_size 1 and batch_size 4 (float32): padding an image to the
largest of its batch used to change its features by up to 68% of their scale (torchvision, given
boxes); now each backend runs same-shape groups only, leaving float-rounding differences.
"""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_detectron2 import TINY_C4, write_config
from test_patch_backend import save_model
from vlbert.featstore import FeatureStore
from vlbert.features.backends import by_input_shape
from vlbert.features.config import load_config
from vlbert.features.extract import extract

REPO = Path(__file__).resolve().parents[1]
SIZES = [(80, 60), (60, 90), (120, 40), (64, 64), (100, 75), (50, 110), (90, 90), (70, 50)]



@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    boxes = {}
    for i, (w, h) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        boxes[str(i)] = [[2, 2, w // 2, h // 2], [w // 4, h // 3, w - 1, h - 1], [0, 0, w, h]]
    (folder.parent / f"{folder.name}_boxes.json").write_text(json.dumps(boxes))
    return folder


def boxes_file(images: Path) -> Path:
    return images.parent / f"{images.name}_boxes.json"


def max_relative_difference(config_of, images: Path, tmp_path: Path, boxes: Path | None = None) -> float:
    """Max |batch 1 - batch 4| over every stored feature, relative to the largest feature magnitude."""
    stores = {}
    for batch_size in (1, 4):
        output = tmp_path / f"b{batch_size}.h5"
        result = extract(images, output, config_of(batch_size), boxes_json=boxes, progress=False)
        assert result.extracted == len(SIZES) and not result.failures
        stores[batch_size] = FeatureStore(output)
    ids = stores[1].ids
    for image_id in ids:
        np.testing.assert_allclose(stores[4][image_id].boxes, stores[1][image_id].boxes, atol=1e-3)
    difference = max(float(np.abs(stores[1][i].features - stores[4][i].features).max()) for i in ids)
    scale = max(float(np.abs(stores[1][i].features).max()) for i in ids)
    return difference / scale


def tiny_torchvision(batch_size: int, **overrides):
    return load_config(REPO / "configs" / "extract" / "tiny.yaml",
                       {"dtype": "float32", "batch_size": batch_size, **overrides})


def test_groups_by_shape_and_keep_item_order():
    calls = []

    def run(indices):
        calls.append(indices)
        return [f"r{i}" for i in indices]

    assert by_input_shape([(3, 4), (5, 6), (3, 4), (7, 7), (5, 6)], run) == ["r0", "r1", "r2", "r3", "r4"]
    assert calls == [[0, 2], [1, 4], [3]]


def test_torchvision_given_boxes(images, tmp_path, record_property):
    relative = max_relative_difference(tiny_torchvision, images, tmp_path, boxes_file(images))
    record_property("relative_difference", relative)
    assert relative < 1e-4  # float rounding (kernels differ with the batch size); padding gave 0.68


def test_torchvision_detected_boxes(images, tmp_path, record_property):
    relative = max_relative_difference(lambda b: tiny_torchvision(b, num_boxes=5), images, tmp_path)
    record_property("relative_difference", relative)
    assert relative < 1e-4  # float rounding (kernels differ with the batch size); padding gave 0.68


def test_patches(images, tmp_path, record_property):
    model_dir = save_model(tmp_path / "vit", "vit")
    config_of = lambda b: load_config(None, dict(backend="patches", model=str(model_dir), min_size=128, max_size=256,  # noqa: E731
                                                 dtype="float32", batch_size=b, num_workers=0, device="cpu"))
    relative = max_relative_difference(config_of, images, tmp_path)
    record_property("relative_difference", relative)
    assert relative < 1e-4  # float rounding (kernels differ with the batch size); padding gave 0.68


def test_grid(images, tmp_path, record_property):
    config_of = lambda b: load_config(None, dict(backend="grid", model="resnet18", weights="none", min_size=64,  # noqa: E731
                                                 max_size=128, grid_size=2, dtype="float32", batch_size=b,
                                                 num_workers=0, device="cpu"))
    relative = max_relative_difference(config_of, images, tmp_path)
    record_property("relative_difference", relative)
    assert relative < 1e-4  # float rounding (kernels differ with the batch size); padding gave 0.68


@pytest.mark.skipif(importlib.util.find_spec("detectron2") is None,
                    reason="detectron2 is not installed (optional extra)")
def test_detectron2_given_boxes(images, tmp_path, record_property):
    relative = max_relative_difference(lambda b: write_config(tmp_path, TINY_C4, dtype="float32", batch_size=b),
                                       images, tmp_path, boxes_file(images))
    record_property("relative_difference", relative)
    assert relative < 1e-4  # float rounding (kernels differ with the batch size); padding gave 0.68
