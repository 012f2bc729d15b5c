"""Patch backend: tiny random transformers vision models saved to a directory, as a user's would be."""
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from tiny import tiny_pretrain_args
from vlbert.featstore import FeatureStore
from vlbert.features.config import ConfigError, load_config
from vlbert.features.extract import ExtractError, extract

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
             patch_size=8)
SIZES = [(80, 60), (60, 90), (120, 40)]  # within min_size / max_size: decoding leaves them as they are



def save_model(folder: Path, kind: str) -> Path:
    """A random model of `kind` and its image processor in `folder` (what from_pretrained reads)."""
    torch.manual_seed(1234)  # not the backend's seed for weights: none (0)
    if kind == "clip":  # a full CLIP checkpoint: the backend takes its vision tower
        text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=100,
                    max_position_embeddings=16, bos_token_id=0, eos_token_id=1)
        model = transformers.CLIPModel(transformers.CLIPConfig(vision_config=SMALL, text_config=text))
    else:
        config_class, model_class = {
            "clip_vision": ("CLIPVisionConfig", "CLIPVisionModel"), "vit": ("ViTConfig", "ViTModel"),
            "dinov2": ("Dinov2Config", "Dinov2Model"), "siglip": ("SiglipVisionConfig", "SiglipVisionModel"),
        }[kind]
        model = getattr(transformers, model_class)(getattr(transformers, config_class)(**SMALL))
    model.save_pretrained(folder)
    if kind in ("clip", "clip_vision", "dinov2"):  # resize the shortest edge, then centre-crop, as CLIP does
        processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        processor = transformers.ViTImageProcessor(size={"height": 32, "width": 32})
    processor.save_pretrained(folder)
    return folder


def write_images(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def settings(model: Path, **overrides):
    values = dict(backend="patches", model=str(model), min_size=128, max_size=256, dtype="float32", batch_size=2,
                  num_workers=0, device="cpu")
    values.update(overrides)
    return load_config(None, values)


def direct_tokens(model_dir: Path, image_path: Path, layer) -> torch.Tensor:
    """The reference: the model called directly on the processor's output for the whole image."""
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    model = getattr(model, "vision_model", model)
    processor = transformers.AutoImageProcessor.from_pretrained(model_dir)
    pixels = processor(images=Image.open(image_path).convert("RGB"), size={"height": 32, "width": 32},
                       do_center_crop=False, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        output = model(pixel_values=pixels, output_hidden_states=True)
    return (output.last_hidden_state if layer is None else output.hidden_states[layer])[0]


def assert_tiles(boxes: np.ndarray, width: int, height: int) -> None:
    """Boxes inside the image, not overlapping, covering it: their areas sum to the image's."""
    assert boxes[:, 0].min() == 0 and boxes[:, 1].min() == 0
    np.testing.assert_allclose([boxes[:, 2].max(), boxes[:, 3].max()], [width, height], rtol=1e-6)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    np.testing.assert_allclose(areas.sum(), width * height, rtol=1e-5)
    for a in range(len(boxes)):
        overlap_w = np.minimum(boxes[a, 2], boxes[:, 2]) - np.maximum(boxes[a, 0], boxes[:, 0])
        overlap_h = np.minimum(boxes[a, 3], boxes[:, 3]) - np.maximum(boxes[a, 1], boxes[:, 1])
        overlap = np.clip(overlap_w, 0, None) * np.clip(overlap_h, 0, None)
        assert (overlap[np.arange(len(boxes)) != a] < 1e-3).all()


@pytest.mark.parametrize("kind, layer", [("clip_vision", -2), ("clip", None), ("vit", -1), ("dinov2", None),
                                         ("siglip", 1)])
def test_stored_patches_equal_a_direct_model_call(tmp_path, kind, layer, record_property):
    model_dir = save_model(tmp_path / kind, kind)
    images = write_images(tmp_path / "imgs")
    store = FeatureStore(extract(images, tmp_path / "p.h5", settings(model_dir, layer=layer), progress=False).output)
    assert (store.feature_dim, store.num_classes) == (32, 0)
    worst = 0.0
    for i, (w, h) in enumerate(SIZES):
        record = store[str(i)]
        tokens = direct_tokens(model_dir, images / f"{i}.png", layer)
        patches = tokens[-16:].numpy()  # 4 x 4 patches of 8 px; CLS first where the model has one
        assert record.features.shape == (16, 32) and record.class_probs is None and record.labels is None
        worst = max(worst, float(np.abs(record.features - patches).max()))
        assert_tiles(record.boxes, w, h)
        np.testing.assert_allclose(record.boxes[1], [w / 4, 0, w / 2, h / 4], rtol=1e-6)  # row-major
    record_property("max_abs_diff", worst)
    assert worst < 1e-5, f"{kind}: stored patch features differ from a direct model call by {worst:.3g}"


def test_cls_token_is_the_first_region_boxed_by_the_whole_image(tmp_path):
    model_dir = save_model(tmp_path / "vit", "vit")
    images = write_images(tmp_path / "imgs")
    with_cls = FeatureStore(extract(images, tmp_path / "c.h5", settings(model_dir, layer=-2, cls_token=True),
                                    progress=False).output)
    record = with_cls["1"]
    assert record.num_boxes == 17
    np.testing.assert_array_equal(record.boxes[0], [0, 0, 60, 90])
    tokens = direct_tokens(model_dir, images / "1.png", -2).numpy()
    np.testing.assert_allclose(record.features, tokens, atol=1e-5)  # [CLS, 16 patches] as the model orders them
    without = FeatureStore(extract(images, tmp_path / "n.h5", settings(model_dir, layer=-2), progress=False).output)
    np.testing.assert_array_equal(without["1"].features, record.features[1:])


def test_provenance_records_model_layer_and_processor(tmp_path):
    model_dir = save_model(tmp_path / "clipdir", "clip_vision")
    images = write_images(tmp_path / "imgs")
    store = FeatureStore(extract(images, tmp_path / "p.h5", settings(model_dir, layer=-2), progress=False).output)
    prov = store.provenance
    assert prov["backend"] == "patches" and prov["model"] == str(model_dir)
    assert prov["weights"]["source"] == "directory" and len(prov["weights"]["files"]["model.safetensors"]) == 64
    patches = prov["patches"]
    assert (patches["layer"], patches["cls_token"], patches["input_size"], patches["patch_size"]) == (-2, False, [32, 32], 8)
    assert patches["image_processor"]["image_processor_type"].startswith("CLIPImageProcessor")
    assert prov["settings"]["layer"] == -2 and prov["regions"] == {"source": "patches"}
    with pytest.raises(Exception, match="layer"):  # another layer is another file: no resume into it
        extract(images, tmp_path / "p.h5", settings(model_dir, layer=-1), progress=False)


def test_bad_settings_are_one_line_errors(tmp_path):
    images = write_images(tmp_path / "imgs")
    siglip = save_model(tmp_path / "siglip", "siglip")
    with pytest.raises(ConfigError, match="has no CLS token"):
        extract(images, tmp_path / "a.h5", settings(siglip, cls_token=True), progress=False)
    with pytest.raises(ConfigError, match="layer: 7 is out of range for 3 hidden states"):
        extract(images, tmp_path / "b.h5", settings(siglip, layer=7), progress=False)
    with pytest.raises(ConfigError, match=r"min_size \(16\) is below the model's input size"):
        extract(images, tmp_path / "c.h5", settings(siglip, min_size=16, max_size=16), progress=False)
    with pytest.raises(ConfigError, match="not a transformers model directory"):
        extract(images, tmp_path / "d.h5", settings(tmp_path / "missing"), progress=False)
    with pytest.raises(ConfigError, match="needs model:"):
        load_config(None, {"backend": "patches"})
    (tmp_path / "boxes.json").write_text('{"0": [[0, 0, 5, 5]]}')
    with pytest.raises(ExtractError, match="--boxes needs a detector backend"):
        extract(images, tmp_path / "e.h5", settings(siglip), boxes_json=tmp_path / "boxes.json", progress=False)


def test_random_weights_from_the_directory_config(tmp_path):
    model_dir = save_model(tmp_path / "vit", "vit")
    images = write_images(tmp_path / "imgs")
    with pytest.warns(UserWarning, match="RANDOM"):
        random = FeatureStore(extract(images, tmp_path / "r.h5", settings(model_dir, weights="none"),
                                      progress=False).output)
    trained = FeatureStore(extract(images, tmp_path / "t.h5", settings(model_dir), progress=False).output)
    assert random.provenance["weights"]["random"] is True
    assert np.abs(random["0"].features - trained["0"].features).max() > 1e-3  # not the saved weights


def test_pretraining_and_vqa_run_on_a_patch_store(tiny_world, tmp_path):
    """Patch features of the world's images train both jobs unchanged (no classes: no MRC)."""
    from test_vqa_cli import vqa_args
    from vlbert.cli import main as vlbert

    model_dir = save_model(tmp_path / "vit", "vit")
    features = tmp_path / "patches.h5"
    result = extract(tiny_world.images_dir, features, settings(model_dir, layer=-2, cls_token=True, dtype="float16"),
                     progress=False)
    assert result.extracted == tiny_world.num_images and not result.failures
    assert FeatureStore(features).num_boxes(str(tiny_world.image_ids("train")[0])) == 17

    class World:  # the tiny world, with the patch store as its features
        def __getattr__(self, name):
            return features if name == "features_path" else getattr(tiny_world, name)

    model_args = {"model.model.region_feature_dim": 32, "model.model.num_region_classes": 0}
    pretrain = tiny_pretrain_args(World(), tmp_path / "pretrain", **model_args, **{
        "trainer.max_steps": 2, "trainer.val_check_interval": 2, "model.objectives.mrc": 0,
        "model.objectives.mrc_kl": 0})
    assert vlbert(["pretrain", "fit", *pretrain]) == 0
    vqa = vqa_args(World(), tmp_path / "vqa", **model_args, **{"trainer.max_steps": 3, "trainer.limit_val_batches": 1})
    assert vlbert(["vqa", "fit", *vqa]) == 0
