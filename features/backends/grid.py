"""A torchvision CNN's grid features as regions (`backend: grid`).

The image is resized as the detectors resize it (shorter side min_size, longer at most max_size,
aspect ratio kept) and normalised with the weights' ImageNet mean and std; the ResNet's last stage
(layer4, the C5 map, stride 32) is average-pooled adaptively to grid_size x grid_size cells, and
each cell is one region, row-major, boxed by its cell of a grid_size x grid_size tiling of the
image (the pooling bins of the C5 map cover the same fractions of it). Grid features as in "In
Defense of Grid Features" / Pixel-BERT, without a detector; no classes (num_classes 0).
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
import torchvision

from vlbert.features.backends import (
    ImageRegions, by_input_shape, download_error, seeded, sha256_file, unlabelled_regions,
)
from vlbert.features.config import ConfigError, ExtractConfig
from vlbert.features.images import DecodedImage, target_scale

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_WEIGHTS_WARNING = (
    "weights: none -> the grid CNN has RANDOM weights; its features are meaningless and only fit for tests. "
    "This is recorded in the output file's provenance."
)


def published_weights(config: ExtractConfig):
    """The torchvision weights enum member for weights: default / an enum name (IMAGENET1K_V1), else None."""
    enum = torchvision.models.get_model_weights(config.model)
    name = str(config.weights)
    if name.lower() == "default":
        return enum.DEFAULT
    return enum[name] if name in enum.__members__ else None


def _normalisation(weights) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the weights' own transforms (ImageNet's for every published ResNet)."""
    if weights is None:
        return IMAGENET_MEAN, IMAGENET_STD
    transform = weights.transforms()
    return tuple(transform.mean), tuple(transform.std)


def model_identity(config: ExtractConfig) -> dict:
    """Provenance of the CNN, without building it (a local file is hashed)."""
    weights = None if config.random_weights else published_weights(config)
    mean, std = _normalisation(weights)
    identity = {"model": config.model,
                "grid": {"grid_size": config.grid_size, "stage": "layer4 (C5)", "mean": list(mean), "std": list(std)}}
    if config.random_weights:
        identity["weights"] = {"source": "none", "random": True, "seed": config.seed, "warning": RANDOM_WEIGHTS_WARNING}
    elif weights is not None:
        identity["weights"] = {"source": "torchvision", "name": f"{type(weights).__name__}.{weights.name}",
                               "url": weights.url}
    elif os.path.isfile(str(config.weights)):
        identity["weights"] = {"source": "file", "file": os.path.basename(str(config.weights)),
                               "sha256": sha256_file(str(config.weights))}
    else:
        names = ", ".join(torchvision.models.get_model_weights(config.model).__members__)
        raise ConfigError(f"weights: {config.weights!r} is neither a weights file nor one of default, none, {names}")
    return identity


def _load_state_dict(path: str) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or "layer4.0.conv1.weight" not in state:
        raise ConfigError(f"weights file {path} is not a torchvision ResNet state dict (no layer4.0.conv1.weight)")
    return {key: value for key, value in state.items() if not key.startswith("fc.")}  # the classifier is unused


def build_model(config: ExtractConfig) -> torch.nn.Module:
    """The whole classification network in eval mode (its fc unused); downloads only published weights."""
    if config.random_weights:
        warnings.warn(RANDOM_WEIGHTS_WARNING, stacklevel=2)
        return seeded(config.seed, lambda: torchvision.models.get_model(config.model, weights=None)).eval()
    if (weights := published_weights(config)) is not None:
        try:
            return torchvision.models.get_model(config.model, weights=weights).eval()
        except OSError as err:
            cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
            raise download_error(weights.url, err, f"at {cached}", f"weights: /path/to/{os.path.basename(cached)}") from err
    model = torchvision.models.get_model(config.model, weights=None)
    model.load_state_dict(_load_state_dict(str(config.weights)), strict=False)
    return model.eval()


def c5(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] normalised -> [B, C, H/32, W/32]: the ResNet's stem and layer1..layer4."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(pixels))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def cell_boxes(width: int, height: int, k: int) -> torch.Tensor:
    """[k*k, 4] the cells of a k x k tiling of a width x height image, row-major."""
    xs = torch.linspace(0, width, k + 1)
    ys = torch.linspace(0, height, k + 1)
    y, x = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
    return torch.stack([xs[x], ys[y], xs[x + 1], ys[y + 1]], -1).reshape(-1, 4)


class GridBackend:
    """grid_size^2 regions per image: C5 cells of a torchvision ResNet, feature_dim its channels."""

    def __init__(self, config: ExtractConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.model = build_model(config).to(device)
        mean, std = _normalisation(None if config.random_weights else published_weights(config))
        self.mean = torch.tensor(mean, device=device).view(3, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(3, 1, 1) * 255.0
        self.feature_dim = int(self.model.fc.in_features)
        self.num_classes = 0
        self.class_names = self.attribute_names = None

    def preprocess(self, image: DecodedImage) -> torch.Tensor:
        """[3, h, w] normalised, at the detectors' test size of the image (aspect ratio kept)."""
        pixels = image.pixels.to(self.device, non_blocking=True).float()
        scale = target_scale(image.width, image.height, self.config.min_size, self.config.max_size)
        size = (max(1, round(image.height * scale)), max(1, round(image.width * scale)))
        if size != tuple(pixels.shape[-2:]):
            pixels = F.interpolate(pixels[None], size=size, mode="bilinear", align_corners=False,
                                   antialias=size[0] < pixels.shape[-2])[0].clamp_(0, 255)
        return (pixels - self.mean) / self.std

    @torch.inference_mode()
    def detect(self, images: list[DecodedImage]) -> list[ImageRegions]:
        inputs = [self.preprocess(image) for image in images]
        k = self.config.grid_size

        def run(indices: list[int]) -> list[ImageRegions]:
            cells = F.adaptive_avg_pool2d(c5(self.model, torch.stack([inputs[i] for i in indices])), k)
            features = cells.flatten(2).transpose(1, 2)  # [B, k*k, C], row-major cells
            return [unlabelled_regions(f, cell_boxes(images[i].width, images[i].height, k))
                    for i, f in zip(indices, features)]

        return by_input_shape([tuple(x.shape) for x in inputs], run)

    def pool(self, images: list[DecodedImage], boxes) -> list[ImageRegions]:
        raise ConfigError("--boxes needs a detector backend (torchvision, detectron2); grid makes one region per cell")


def build(config: ExtractConfig, device: torch.device) -> GridBackend:
    return GridBackend(config, device)


__all__ = ["GridBackend", "build", "build_model", "c5", "cell_boxes", "model_identity", "published_weights"]
