"""Grid backend: a torchvision ResNet-18 with random weights (weights: none), CPU, small images."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from vlbert.featstore import FeatureStore
from vlbert.features.backends import model_identity
from vlbert.features.backends.grid import build_model, cell_boxes
from vlbert.features.config import ConfigError, load_config
from vlbert.features.extract import extract

SIZES = [(80, 60), (60, 90), (120, 40)]



def settings(**overrides):
    values = dict(backend="grid", model="resnet18", weights="none", min_size=128, max_size=256, grid_size=3,
                  dtype="float32", batch_size=2, num_workers=0, device="cpu")
    values.update(overrides)
    return load_config(None, values)


def write_images(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def direct_cells(image_path: Path, config) -> torch.Tensor:
    """The reference: the image resized as the detectors resize it, ImageNet-normalised, through
    torchvision's own ResNet children up to layer4, pooled to k x k: [k*k, C]."""
    pixels = torch.from_numpy(np.asarray(Image.open(image_path).convert("RGB"))).permute(2, 0, 1).float()
    h, w = pixels.shape[-2:]
    scale = min(config.min_size / min(h, w), config.max_size / max(h, w))
    pixels = F.interpolate(pixels[None], size=(round(h * scale), round(w * scale)), mode="bilinear",
                           align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    network = build_model(config)
    trunk = torch.nn.Sequential(*list(network.children())[:-2])  # all but avgpool and fc
    with torch.no_grad():
        c5 = trunk((pixels / 255 - mean) / std)
    return F.adaptive_avg_pool2d(c5, config.grid_size)[0].flatten(1).T


def test_stored_cells_equal_a_direct_model_call_and_tile_the_image(tmp_path, record_property):
    config = settings()
    images = write_images(tmp_path / "imgs")
    store = FeatureStore(extract(images, tmp_path / "g.h5", config, progress=False).output)
    assert (store.feature_dim, store.num_classes) == (512, 0)
    worst = 0.0
    for i, (w, h) in enumerate(SIZES):
        record = store[str(i)]
        assert record.features.shape == (9, 512) and record.class_probs is None
        worst = max(worst, float(np.abs(record.features - direct_cells(images / f"{i}.png", config).numpy()).max()))
        np.testing.assert_allclose(record.boxes, cell_boxes(w, h, 3).numpy())
        np.testing.assert_allclose(record.boxes[1], [w / 3, 0, 2 * w / 3, h / 3], rtol=1e-6)  # row-major
        areas = (record.boxes[:, 2] - record.boxes[:, 0]) * (record.boxes[:, 3] - record.boxes[:, 1])
        np.testing.assert_allclose(areas, w * h / 9, rtol=1e-5)  # nine equal cells: they tile the image
    record_property("max_abs_diff", worst)
    assert worst < 1e-4, f"stored grid features differ from a direct ResNet call by {worst:.3g}"
    prov = store.provenance
    assert prov["backend"] == "grid" and prov["grid"]["grid_size"] == 3 and prov["weights"]["random"] is True
    assert prov["settings"] == {"backend": "grid", "model": "resnet18", "min_size": 128, "max_size": 256,
                                "dtype": "float32", "grid_size": 3}


def test_cell_boxes_tile_any_image():
    boxes = cell_boxes(100, 50, 4)
    assert boxes.shape == (16, 4)
    np.testing.assert_allclose(boxes[0], [0, 0, 25, 12.5])
    np.testing.assert_allclose(boxes[-1], [75, 37.5, 100, 50])
    assert float(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum()) == pytest.approx(5000)


def test_weights_published_by_name_and_from_a_file(tmp_path):
    identity = model_identity(load_config(None, {"backend": "grid", "model": "resnet50"}))  # named, not downloaded
    assert identity["weights"]["name"] == "ResNet50_Weights.IMAGENET1K_V2"
    v1 = model_identity(load_config(None, {"backend": "grid", "model": "resnet50", "weights": "IMAGENET1K_V1"}))
    assert v1["weights"]["url"].endswith(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url.split("/")[-1])

    images = write_images(tmp_path / "imgs")
    weights = tmp_path / "resnet18.pth"
    torch.save(build_model(settings()).state_dict(), weights)
    random = FeatureStore(extract(images, tmp_path / "r.h5", settings(), progress=False).output)
    from_file = FeatureStore(extract(images, tmp_path / "f.h5", settings(weights=str(weights)), progress=False).output)
    assert from_file.provenance["weights"]["source"] == "file"
    np.testing.assert_array_equal(from_file["2"].features, random["2"].features)
    with pytest.raises(ConfigError, match="neither a weights file nor one of default, none, IMAGENET1K_V1"):
        model_identity(settings(weights=str(tmp_path / "missing.pth")))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="not a torchvision ResNet state dict"):
        extract(images, tmp_path / "o.h5", settings(weights=str(tmp_path / "other.pth")), progress=False)


def test_bad_grid_settings():
    with pytest.raises(ConfigError, match="is not a grid model"):
        settings(model="vgg16")
    with pytest.raises(ConfigError, match="grid_size: must be >= 1"):
        settings(grid_size=0)
