"""Backends. Each turns decoded images into regions (features, boxes, class distribution):
detectors (torchvision, detectron2) choose boxes or pool given ones; `patches` (transformers vision
transformers) and `grid` (a torchvision CNN's pooled C5 map) make one region per patch / cell.

A backend module is imported only when its backend is chosen, so detectron2 stays an optional extra.

A record never depends on which images share its batch: every backend runs its network on groups
of images whose input tensors have one shape (`by_input_shape`), so no image is padded to another's
size (padding reaches the convolutions and changed features by up to 68% of their scale).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, TypeVar

import numpy as np
import torch

from vlbert.errors import InputError
from vlbert.features.config import ExtractConfig
from vlbert.features.images import DecodedImage


class WeightsDownloadError(InputError):
    """Published weights that could not be downloaded (no network, a proxy, a firewall): the message
    names the URL, where the file is looked for, and how to use a local copy instead."""


def download_error(url: str, error: BaseException, cached: str, setting: str) -> WeightsDownloadError:
    """The one-line error for weights at `url` that could not be fetched; `cached`: where the
    library looks for the file before downloading it ("at <path>"); `setting`: the config line
    that avoids the download."""
    reason = getattr(error, "reason", None) or error
    return WeightsDownloadError(
        f"could not download the weights {url} ({type(error).__name__}: {reason}); on a machine without "
        f"internet, download the file elsewhere and put it {cached}, or set `{setting}` in the extraction "
        "config (or pass --weights)"
    )


@dataclass
class ImageRegions:
    """Kept regions of one image. features [N, D], boxes [N, 4] x1 y1 x2 y2 in the image's own
    pixels, class_probs [N, C] (None when not stored), labels [N] top foreground class, scores [N]
    that class's probability, attributes [N] / attribute_scores [N] where the model has an
    attribute head (None otherwise)."""

    features: np.ndarray
    boxes: np.ndarray
    class_probs: np.ndarray | None
    labels: np.ndarray | None
    scores: np.ndarray | None = None
    attributes: np.ndarray | None = None
    attribute_scores: np.ndarray | None = None


class Backend(Protocol):
    feature_dim: int
    num_classes: int
    class_names: list[str] | None  # one per class_probs column, where the backend knows them
    attribute_names: list[str] | None

    def detect(self, images: list[DecodedImage]) -> list[ImageRegions]:
        """Regions chosen by the detector (box selection of the bottom-up-attention recipe)."""

    def pool(self, images: list[DecodedImage], boxes: list[np.ndarray]) -> list[ImageRegions]:
        """Regions for given boxes [N_i, 4] (image pixels), in the given order."""


def backend_module(config: ExtractConfig):
    """The backend's module, imported when it is asked for (detectron2 is an optional dependency)."""
    if config.backend == "detectron2":
        from vlbert.features.backends import detectron2 as module
    elif config.backend == "patches":
        from vlbert.features.backends import patches as module
    elif config.backend == "grid":
        from vlbert.features.backends import grid as module
    else:
        from vlbert.features.backends import torchvision as module
    return module


def build_backend(config: ExtractConfig, device: torch.device) -> Backend:
    return backend_module(config).build(config, device)


def model_identity(config: ExtractConfig) -> dict:
    """What the weights and model are, without building the model (for provenance checks)."""
    return backend_module(config).model_identity(config)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


Result = TypeVar("Result")


def by_input_shape(shapes: Sequence[tuple[int, ...]], run: Callable[[list[int]], list[Result]]) -> list[Result]:
    """`run(indices)` once per group of items whose input tensors have one shape (groups in order
    of first appearance); the results come back in item order. Stacking same-shape inputs pads
    nothing, so each item's result is the one it gets alone, whatever else is in the batch."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(index)
    results: list = [None] * len(shapes)
    for indices in groups.values():
        for index, result in zip(indices, run(indices)):
            results[index] = result
    return results


def regions_from_scores(
    features: torch.Tensor, boxes: torch.Tensor, probs: torch.Tensor, background_index: int | None,
    keep_probs: bool,
) -> ImageRegions:
    """Pack kept regions; labels are the top foreground class (indices into the class_probs columns)
    and scores its probability (the objects_conf of bottom-up-attention's TSV files)."""
    foreground = probs.clone()
    if background_index is not None:
        foreground[:, background_index] = -1.0
    if probs.shape[0]:
        scores, labels = foreground.max(-1)
    else:
        scores, labels = torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    return ImageRegions(
        features=features.float().cpu().numpy(),
        boxes=boxes.float().cpu().numpy(),
        class_probs=probs.float().cpu().numpy() if keep_probs else None,
        labels=labels.cpu().numpy().astype(np.int64),
        scores=scores.float().cpu().numpy(),
    )


def unlabelled_regions(features: torch.Tensor, boxes: torch.Tensor) -> ImageRegions:
    """Regions without classes (patches, grid cells): features [N, D], boxes [N, 4] image pixels."""
    return ImageRegions(features=features.float().cpu().numpy(), boxes=boxes.float().cpu().numpy(),
                        class_probs=None, labels=None)


def seeded(seed: int, build: Callable[[], Result]) -> Result:
    """`build()` under torch seed `seed` (random weights identical in every process and rerun),
    leaving the global generator as it was."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
