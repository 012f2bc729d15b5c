"""Patch tokens of a transformers vision model as regions (`backend: patches`).

Any model with patch tokens loads: ViT, DINOv2, SigLIP vision towers, CLIP vision towers, and the
vision sub-model of a full CLIP / SigLIP checkpoint (`AutoModel`, then its `vision_model`), from a
local directory or a hub name. The image processor of the same directory (`AutoImageProcessor`)
resizes and normalises; the whole image is resized to the model's input size (no centre crop, so
the patches tile the whole image, and the aspect ratio is not kept). Each patch token of the chosen
hidden state (`layer`) is one region whose box is that patch's pixels in the original image, so the
box-location embedding applies as to detector regions; with `cls_token` the CLS token comes first,
boxed by the whole image. No classes (num_classes 0).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from vlbert.features.backends import (
    ImageRegions, by_input_shape, download_error, seeded, sha256_file, unlabelled_regions,
)
from vlbert.features.config import ConfigError, ExtractConfig
from vlbert.features.images import DecodedImage

RANDOM_WEIGHTS_WARNING = (
    "weights: none -> the vision model has RANDOM weights (its directory's config only); its features are "
    "meaningless and only fit for tests. This is recorded in the output file's provenance."
)
_HASHED = ("config.json", "preprocessor_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _load(what, model: str, **kwargs):
    """`what.from_pretrained(model)`; a missing directory or an unknown name is a ConfigError, a
    failed download one line saying how to work offline."""
    try:
        return what.from_pretrained(model, **kwargs)
    except ValueError as err:  # e.g. a config.json without a known model_type
        raise ConfigError(f"model: {model!r}: {' '.join(str(err).split())}") from None
    except OSError as err:
        if Path(model).exists() or "/" not in model or model.startswith((".", "/", "~")):
            raise ConfigError(f"model: {model!r} is not a transformers model directory with a config and an image "
                              f"processor, nor a hub name ({err})") from None
        raise download_error(f"https://huggingface.co/{model}", err, "in the Hugging Face cache (HF_HOME)",
                             "model: /path/to/a/local/copy") from err


def vision_config(model: str):
    """The vision model's config: the vision_config of a CLIP / SigLIP checkpoint, else the config."""
    from transformers import AutoConfig

    config = _load(AutoConfig, model)
    return getattr(config, "vision_config", None) or config


def image_processor(model: str):
    from transformers import AutoImageProcessor

    return _load(AutoImageProcessor, model)


def input_size(processor) -> tuple[int, int]:
    """(height, width) the processor normally feeds the model: its crop when it centre-crops, else its
    resize target (a shortest_edge becomes a square)."""
    size = processor.crop_size if getattr(processor, "do_center_crop", False) and processor.crop_size else processor.size
    size = {"height": size, "width": size} if isinstance(size, int) else {k: v for k, v in dict(size).items() if v}
    if size.get("height") and size.get("width"):
        return int(size["height"]), int(size["width"])
    edge = size.get("shortest_edge") or size.get("longest_edge")
    if not edge:
        raise ConfigError(f"the image processor's size {size} has no height/width or shortest_edge")
    return int(edge), int(edge)


def _weights_identity(config: ExtractConfig, vision) -> dict:
    if config.random_weights:
        return {"source": "none", "random": True, "seed": config.seed, "warning": RANDOM_WEIGHTS_WARNING}
    if str(config.weights).lower() != "default":
        raise ConfigError(f"weights: {config.weights!r}: the patches backend takes the weights of its model "
                          "directory (weights: default) or none (random weights)")
    folder = Path(config.model)
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.name in _HASHED or p.suffix in _WEIGHT_SUFFIXES)
        return {"source": "directory", "name": folder.name, "files": {p.name: sha256_file(str(p)) for p in files}}
    return {"source": "hub", "name": config.model, "commit": getattr(vision, "_commit_hash", None)}


def model_identity(config: ExtractConfig) -> dict:
    """Provenance: the model (directory files by hash, or hub name and commit), the layer, the CLS
    choice, and what the image processor does. Reads configs only; the model is not built."""
    vision = vision_config(config.model)
    processor = image_processor(config.model)
    settings = json.loads(json.dumps(processor.to_dict(), default=str))  # enums (resample) as plain values
    return {
        "model": config.model,
        "weights": _weights_identity(config, vision),
        "patches": {
            "model_type": vision.model_type, "patch_size": int(vision.patch_size), "hidden_size": int(vision.hidden_size),
            "layer": config.layer, "cls_token": config.cls_token, "input_size": list(input_size(processor)),
            "image_processor": {key: settings.get(key) for key in (
                "image_processor_type", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                "image_std", "do_convert_rgb")},
        },
    }


def build_model(config: ExtractConfig) -> torch.nn.Module:
    """The vision tower in eval mode: `AutoModel`'s `vision_model` where it has one (CLIP, SigLIP)."""
    from transformers import AutoConfig, AutoModel

    if config.random_weights:
        warnings.warn(RANDOM_WEIGHTS_WARNING, stacklevel=2)
        model_config = _load(AutoConfig, config.model)
        model = seeded(config.seed, lambda: AutoModel.from_config(model_config))
    else:
        model = _load(AutoModel, config.model)
    return getattr(model, "vision_model", model).eval()


class PatchBackend:
    """Patch tokens [B, P, D] of one hidden state -> P regions per image (plus the CLS token)."""

    def __init__(self, config: ExtractConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.model = build_model(config).to(device)
        self.processor = image_processor(config.model)
        self.input_size = input_size(self.processor)
        if config.min_size < max(self.input_size):
            raise ConfigError(f"min_size ({config.min_size}) is below the model's input size {self.input_size}: "
                              f"images would be shrunk below it while decoding; set min_size >= {max(self.input_size)}")
        self.patch_size = int(self.model.config.patch_size)
        self.grid = (self.input_size[0] // self.patch_size, self.input_size[1] // self.patch_size)
        probe = self._tokens(torch.zeros(1, 3, *self.input_size, device=device))
        self.prefix = probe.shape[1] - self.grid[0] * self.grid[1]  # CLS (+ register) tokens before the patches
        if self.prefix < 0:
            raise ConfigError(f"model {config.model}: {probe.shape[1]} tokens for a {self.grid[0]}x{self.grid[1]} "
                              "patch grid; it does not look like a patch-token vision transformer")
        if config.cls_token and self.prefix == 0:
            raise ConfigError(f"cls_token: model {config.model} ({self.model.config.model_type}) has no CLS token; "
                              "set cls_token: false")
        self.feature_dim = int(probe.shape[-1])
        self.num_classes = 0
        self.class_names = self.attribute_names = None
        self._patch_boxes = self._input_patch_boxes()

    @torch.inference_mode()
    def _tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, T, D]: the hidden state `layer` (None: the model's output)."""
        output = self.model(pixel_values=pixel_values, output_hidden_states=self.config.layer is not None)
        if self.config.layer is None:
            return output.last_hidden_state
        states = output.hidden_states
        if not -len(states) <= self.config.layer < len(states):
            raise ConfigError(f"layer: {self.config.layer} is out of range for {len(states)} hidden states "
                              f"(0 .. {len(states) - 1}, or -1 .. -{len(states)})")
        return states[self.config.layer]

    def _input_patch_boxes(self) -> torch.Tensor:
        """[P, 4] each patch's pixels in the model input, row-major as the patch tokens are."""
        rows, cols = self.grid
        y, x = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        corners = torch.stack([x, y, x + 1, y + 1], -1).reshape(-1, 4).float()
        return corners * self.patch_size

    def preprocess(self, images: list[DecodedImage]) -> torch.Tensor:
        """[B, 3, H, W]: the processor's resize (to the whole input size, no crop) and normalisation."""
        height, width = self.input_size
        batch = self.processor(images=[image.pixels for image in images], size={"height": height, "width": width},
                               do_center_crop=False, return_tensors="pt")
        return batch["pixel_values"].to(self.device)

    def _regions(self, image: DecodedImage, tokens: torch.Tensor) -> ImageRegions:
        height, width = self.input_size
        scale = torch.tensor([image.width / width, image.height / height] * 2)
        boxes = self._patch_boxes * scale
        features = tokens[self.prefix:]
        if self.config.cls_token:
            boxes = torch.cat([torch.tensor([[0.0, 0.0, image.width, image.height]]), boxes])
            features = torch.cat([tokens[:1], features])
        return unlabelled_regions(features, boxes)

    @torch.inference_mode()
    def detect(self, images: list[DecodedImage]) -> list[ImageRegions]:
        pixel_values = self.preprocess(images)

        def run(indices: list[int]) -> list[ImageRegions]:
            tokens = self._tokens(pixel_values[indices])
            return [self._regions(images[i], t) for i, t in zip(indices, tokens)]

        return by_input_shape([tuple(p.shape) for p in pixel_values], run)

    def pool(self, images: list[DecodedImage], boxes) -> list[ImageRegions]:
        raise ConfigError("--boxes needs a detector backend (torchvision, detectron2); patches makes one region per patch")


def build(config: ExtractConfig, device: torch.device) -> PatchBackend:
    return PatchBackend(config, device)


__all__ = ["PatchBackend", "build", "build_model", "image_processor", "input_size", "model_identity", "vision_config"]
