"""detectron2 backend on a tiny random detectron2 model (skipped when detectron2 is not installed)."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlbert.featstore import FeatureStore
from vlbert.features.config import ConfigError, load_config
from vlbert.features.extract import extract

TINY_C4 = """
MODEL:
  META_ARCHITECTURE: GeneralizedRCNN
  BACKBONE: {NAME: build_resnet_backbone, FREEZE_AT: 0}
  RESNETS: {DEPTH: 18, RES2_OUT_CHANNELS: 64, OUT_FEATURES: [res4], NORM: FrozenBN, WIDTH_PER_GROUP: 8}
  RPN: {IN_FEATURES: [res4], PRE_NMS_TOPK_TEST: 200, POST_NMS_TOPK_TEST: 50}
  ROI_HEADS: {NAME: Res5ROIHeads, NUM_CLASSES: 7, IN_FEATURES: [res4]}
  ROI_BOX_HEAD: {POOLER_RESOLUTION: 7, POOLER_TYPE: ROIAlignV2}
INPUT: {FORMAT: BGR}
"""
TINY_FPN = """
MODEL:
  META_ARCHITECTURE: GeneralizedRCNN
  BACKBONE: {NAME: build_resnet_fpn_backbone, FREEZE_AT: 0}
  RESNETS: {DEPTH: 18, RES2_OUT_CHANNELS: 64, OUT_FEATURES: [res2, res3, res4, res5]}
  FPN: {IN_FEATURES: [res2, res3, res4, res5], OUT_CHANNELS: 32}
  ANCHOR_GENERATOR: {SIZES: [[32], [64], [128], [256], [512]]}
  RPN: {IN_FEATURES: [p2, p3, p4, p5, p6], PRE_NMS_TOPK_TEST: 200, POST_NMS_TOPK_TEST: 50}
  ROI_HEADS: {NAME: StandardROIHeads, NUM_CLASSES: 5, IN_FEATURES: [p2, p3, p4, p5]}
  ROI_BOX_HEAD: {NAME: FastRCNNConvFCHead, NUM_FC: 2, FC_DIM: 64, POOLER_RESOLUTION: 7}
"""


def write_config(tmp_path: Path, text: str, **overrides):
    path = tmp_path / "d2.yaml"
    path.write_text(text)
    settings = dict(backend="detectron2", detectron2_config=str(path), weights="none", min_size=64, max_size=96,
                    proposals=50, min_boxes=3, max_boxes=12, batch_size=2, num_workers=0, device="cpu")
    settings.update(overrides)
    return load_config(None, settings)


def write_images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (50 + 5 * i, 70, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_main_environment_never_imports_detectron2():
    if "detectron2" in sys.modules:
        pytest.skip("detectron2 was imported by an earlier test in this session")
    import vlbert.features.backends.torchvision  # noqa: F401
    import vlbert.features.extract  # noqa: F401
    import vlbert.features.merge  # noqa: F401
    import vlbert.features.tsv  # noqa: F401

    assert "detectron2" not in sys.modules


def test_missing_detectron2_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "detectron2", None)  # import fails as if not installed
    config = write_config(tmp_path, TINY_C4)
    from vlbert.features.backends import model_identity

    with pytest.raises(ConfigError, match="Installing detectron2"):
        model_identity(config)


needs_detectron2 = pytest.mark.skipif(
    importlib.util.find_spec("detectron2") is None, reason="detectron2 is not installed (optional extra)"
)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@needs_detectron2
def test_c4_model_detects_with_res5_pooled_features(tmp_path):
    config = write_config(tmp_path, TINY_C4)
    result = extract(write_images(tmp_path / "imgs", 3), tmp_path / "d2.h5", config, progress=False)
    assert result.extracted == 3 and not result.failures
    store = FeatureStore(tmp_path / "d2.h5")
    assert store.feature_dim == 512  # res5 channels = 8 x RES2_OUT_CHANNELS (2048 for ResNet-101)
    assert store.num_classes == 8  # 7 classes + background
    prov = store.provenance
    assert prov["backend"] == "detectron2" and prov["weights"]["random"] is True
    assert prov["detectron2"]["roi_heads"] == "Res5ROIHeads" and prov["classes"]["background_index"] == 7
    for image_id in store.ids:
        record = store[image_id]
        assert 3 <= record.num_boxes <= 12 and np.isfinite(record.features).all()
        assert record.boxes[:, 2].max() <= record.image_w + 1e-3 and record.boxes[:, 3].max() <= record.image_h + 1e-3
        np.testing.assert_allclose(record.class_probs.sum(-1), 1, atol=0.02)
        assert (record.labels < 7).all()  # top foreground class, never the background (last)


@needs_detectron2
def test_c4_given_boxes_match_detected_regions(tmp_path):
    config = write_config(tmp_path, TINY_C4, dtype="float32", num_boxes=4)
    images = write_images(tmp_path / "imgs", 2)
    detected = FeatureStore(extract(images, tmp_path / "det.h5", config, progress=False).output)
    assert all(detected.num_boxes(i) == 4 for i in detected.ids)
    boxes = {i: detected[i].boxes.tolist() for i in detected.ids}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    given = FeatureStore(extract(images, tmp_path / "given.h5", config, boxes_json=tmp_path / "boxes.json",
                                 progress=False).output)
    for image_id in boxes:
        np.testing.assert_allclose(given[image_id].features, detected[image_id].features, atol=2e-3, rtol=1e-3)


@needs_detectron2
def test_fpn_model_and_weights_file(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from vlbert.features.backends.detectron2 import Detectron2Backend

    config = write_config(tmp_path, TINY_FPN, num_boxes=5)
    backend = Detectron2Backend(config, torch.device("cpu"))
    assert backend.feature_dim == 64 and backend.num_classes == 6
    DetectionCheckpointer(backend.model, save_dir=str(tmp_path)).save("tiny_fpn")
    weights = tmp_path / "tiny_fpn.pth"
    images = write_images(tmp_path / "imgs", 2)
    random_run = FeatureStore(extract(images, tmp_path / "r.h5", config, progress=False).output)
    file_config = write_config(tmp_path, TINY_FPN, num_boxes=5, weights=str(weights))
    file_run = FeatureStore(extract(images, tmp_path / "f.h5", file_config, progress=False).output)
    assert file_run.provenance["weights"]["source"] == "file"
    np.testing.assert_array_equal(file_run["0"].features, random_run["0"].features)
    assert file_run["0"].features.shape == (5, 64)


@needs_detectron2
def test_unknown_detectron2_key_is_explained(tmp_path):
    config = write_config(tmp_path, TINY_C4.replace("MODEL:\n", "MODEL:\n  CAFFE_MAXPOOL: true\n", 1))
    from vlbert.features.backends import model_identity

    with pytest.raises(ConfigError, match="detectron2_setup"):
        model_identity(config)


def test_vocabulary_files_give_the_first_synonym_of_each_line(tmp_path):
    from vlbert.features.backends.detectron2 import read_names

    vocab = tmp_path / "objects_vocab.txt"
    vocab.write_text("yolk\nSign,signs\n\nstreet light,streetlight\n")
    assert read_names(str(vocab), "class_names_file") == ["yolk", "sign", "street light"]
    with pytest.raises(ConfigError, match="class_names_file: cannot read"):
        read_names(str(tmp_path / "missing.txt"), "class_names_file")


@needs_detectron2
def test_scores_and_class_names_file(tmp_path):
    names = tmp_path / "classes.txt"
    names.write_text("".join(f"thing{i}\n" for i in range(7)))
    config = write_config(tmp_path, TINY_C4, class_names_file=str(names))
    store = FeatureStore(extract(write_images(tmp_path / "imgs", 2), tmp_path / "d2.h5", config, progress=False).output)
    assert store.class_names == [f"thing{i}" for i in range(7)] + ["__background__"]
    assert store.provenance["class_names"]["file"] == "classes.txt"
    record = store["0"]
    np.testing.assert_allclose(record.scores, record.class_probs[np.arange(record.num_boxes), record.labels], atol=2e-3)
    assert record.attributes is None  # this model has no attribute head
