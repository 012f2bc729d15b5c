"""torchvision Faster R-CNN (ResNet-50 FPN, v1 and v2) as a region-feature extractor.

The detector's own modules run in order (transform, backbone, RPN, RoI pooling, box head,
class predictor); the region feature is the box head's output, the vector the classifier
reads (1024-d). The detector's own post-processing is replaced by the bottom-up-attention
box selection (vlbert.features.boxes). Boxes are the proposals the features were pooled on.
"""
from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import torch
import torchvision
from torchvision.models.detection import (
    FasterRCNN_ResNet50_FPN_V2_Weights,
    FasterRCNN_ResNet50_FPN_Weights,
    fasterrcnn_resnet50_fpn,
    fasterrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.image_list import ImageList

from vlbert.features.backends import (
    ImageRegions, by_input_shape, download_error, regions_from_scores, seeded, sha256_file,
)
from vlbert.features.boxes import select_boxes
from vlbert.features.config import ConfigError, ExtractConfig
from vlbert.features.images import DecodedImage

log = logging.getLogger(__name__)

_BUILDERS = {
    "fasterrcnn_resnet50_fpn": (fasterrcnn_resnet50_fpn, FasterRCNN_ResNet50_FPN_Weights),
    "fasterrcnn_resnet50_fpn_v2": (fasterrcnn_resnet50_fpn_v2, FasterRCNN_ResNet50_FPN_V2_Weights),
}
_CLASSIFIER_KEY = "roi_heads.box_predictor.cls_score.weight"
RANDOM_WEIGHTS_WARNING = (
    "weights: none -> the detector has RANDOM weights; its features are meaningless and only fit for "
    "tests. This is recorded in the output file's provenance."
)


def published_weights(config: ExtractConfig):
    """The torchvision weights enum member for weights: default / COCO_V1 / DEFAULT, else None."""
    enum = _BUILDERS[config.model][1]
    name = str(config.weights)
    if name.lower() == "default":
        return enum.DEFAULT
    if name in enum.__members__:
        return enum[name]
    return None


def model_identity(config: ExtractConfig) -> dict:
    """Provenance of the detector, computed without building it (a local file is hashed)."""
    identity = {"model": config.model, "classes": {"background_index": 0}}
    if config.random_weights:
        identity["weights"] = {"source": "none", "random": True, "seed": config.seed, "warning": RANDOM_WEIGHTS_WARNING}
        return identity
    weights = published_weights(config)
    if weights is not None:
        identity["weights"] = {"source": "torchvision", "name": f"{type(weights).__name__}.{weights.name}",
                               "url": weights.url}
        return identity
    path = str(config.weights)
    if not os.path.isfile(path):
        enum = _BUILDERS[config.model][1]
        raise ConfigError(
            f"weights: {path!r} is neither a weights file nor one of default, none, "
            f"{', '.join(enum.__members__)}"
        )
    identity["weights"] = {"source": "file", "file": os.path.basename(path), "sha256": sha256_file(path)}
    return identity


def class_names(config: ExtractConfig) -> list[str] | None:
    """The COCO category of each class id, from the published weights' meta (no download): for
    published weights only (random weights or a file's classes mean nothing known). The ids
    COCO leaves unused, all named 'N/A' there, get their id ('N/A 12'), so each name is unique."""
    weights = None if config.random_weights else published_weights(config)
    if weights is None:
        return None
    return [f"N/A {i}" if name == "N/A" else name for i, name in enumerate(weights.meta["categories"])]


def weights_on_machine(config: ExtractConfig) -> bool:
    """True when building the model downloads nothing: random weights, a local file, or
    published weights already in torchvision's cache (torch.hub's checkpoints folder)."""
    if config.random_weights:
        return True
    weights = published_weights(config)
    if weights is None:
        return os.path.isfile(str(config.weights))
    return os.path.isfile(cached_weights_path(weights))


def cached_weights_path(weights) -> str:
    """Where torchvision looks for published weights before downloading them (torch.hub's cache)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def _with_published_weights(builder, weights, kwargs: dict) -> torch.nn.Module:
    """The detector with torchvision's published weights, which it downloads on first use; a failed
    download (URLError, HTTPError, a timeout: all OSError) becomes one line saying what to do."""
    try:
        return builder(weights=weights, **kwargs)
    except OSError as err:
        cached = cached_weights_path(weights)
        raise download_error(weights.url, err, f"at {cached}", f"weights: /path/to/{os.path.basename(cached)}") from err


def _load_state_dict(path: str) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # torchvision reference-training checkpoints
    if not isinstance(state, dict) or _CLASSIFIER_KEY not in state:
        raise ConfigError(f"weights file {path} is not a torchvision Faster R-CNN state dict (no {_CLASSIFIER_KEY})")
    return state


def build_model(config: ExtractConfig) -> torch.nn.Module:
    """The torchvision detector in eval mode; never downloads unless weights: default / an enum name."""
    builder, _ = _BUILDERS[config.model]
    kwargs = dict(min_size=config.min_size, max_size=config.max_size,
                  rpn_post_nms_top_n_test=config.proposals,
                  rpn_pre_nms_top_n_test=max(1000, config.proposals))
    if config.random_weights:
        warnings.warn(RANDOM_WEIGHTS_WARNING, stacklevel=2)
        # the same random model in every process and every rerun
        model = seeded(config.seed, lambda: builder(weights=None, weights_backbone=None, num_classes=91, **kwargs))
    elif (weights := published_weights(config)) is not None:
        model = _with_published_weights(builder, weights, kwargs)
    else:
        state = _load_state_dict(str(config.weights))
        num_classes = int(state[_CLASSIFIER_KEY].shape[0])
        model = builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
        model.load_state_dict(state)
    return model.eval()


class TorchvisionBackend:
    """Regions from a torchvision Faster R-CNN. feature_dim 1024, class_probs over C classes
    (91 for COCO, index 0 = background). Images run in groups of one input shape (`by_input_shape`)."""

    background_index = 0

    def __init__(self, config: ExtractConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.model = build_model(config).to(device)
        heads = self.model.roi_heads
        self.feature_dim = int(heads.box_predictor.cls_score.in_features)
        self.num_classes = int(heads.box_predictor.cls_score.out_features)
        self.class_names = class_names(config) if self.num_classes == 91 else None
        self.attribute_names = None

    def _inputs(self, images: list[DecodedImage]) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        """Per image: the detector's input (resized, normalised, padded to its own multiple of 32)
        and its size before padding."""
        out = []
        for image in images:
            pixels = image.pixels.to(self.device, non_blocking=True).float().div_(255.0)
            image_list, _ = self.model.transform([pixels])
            out.append((image_list.tensors[0], image_list.image_sizes[0]))
        return out

    def _grouped(self, images: list[DecodedImage], run) -> list[ImageRegions]:
        """run(images, image_list, features) on each group of images with one input shape."""
        inputs = self._inputs(images)

        def group(indices: list[int]) -> list[ImageRegions]:
            image_list = ImageList(torch.stack([inputs[i][0] for i in indices]), [inputs[i][1] for i in indices])
            features = self.model.backbone(image_list.tensors)
            return run(indices, image_list, features)

        return by_input_shape([tensor.shape for tensor, _ in inputs], group)

    def _heads(self, features, boxes: list[torch.Tensor], image_sizes) -> tuple[torch.Tensor, torch.Tensor]:
        heads = self.model.roi_heads
        pooled = heads.box_roi_pool(features, boxes, image_sizes)
        representation = heads.box_head(pooled)  # [sum K, D]: what the classifier reads
        class_logits, _ = heads.box_predictor(representation)
        return representation, torch.softmax(class_logits.float(), dim=-1)

    @staticmethod
    def _scale(images: list[DecodedImage], image_sizes) -> list[torch.Tensor]:
        """Per image (sx, sy, sx, sy): detector-input pixels -> the image's own pixels."""
        return [
            torch.tensor([image.width / w, image.height / h] * 2, dtype=torch.float32)
            for image, (h, w) in zip(images, image_sizes)
        ]

    @torch.inference_mode()
    def detect(self, images: list[DecodedImage]) -> list[ImageRegions]:
        def run(indices, image_list, features):
            group = [images[i] for i in indices]
            proposals, _ = self.model.rpn(image_list, features)
            representation, probs = self._heads(features, proposals, image_list.image_sizes)
            counts = [len(p) for p in proposals]
            out = []
            for image, boxes, feats, prob, scale in zip(
                group, proposals, representation.split(counts), probs.split(counts),
                self._scale(group, image_list.image_sizes),
            ):
                keep = select_boxes(boxes, prob[:, 1:], self.config.selection)
                kept_boxes = _clip(boxes[keep].cpu() * scale, image.width, image.height)
                out.append(regions_from_scores(feats[keep], kept_boxes, prob[keep], self.background_index,
                                               self.config.class_probs))
            return out

        return self._grouped(images, run)

    @torch.inference_mode()
    def pool(self, images: list[DecodedImage], boxes: list[np.ndarray]) -> list[ImageRegions]:
        def run(indices, image_list, features):
            scales = self._scale([images[i] for i in indices], image_list.image_sizes)
            given = [torch.as_tensor(boxes[i], dtype=torch.float32) for i in indices]
            detector_boxes = [(b / s).to(self.device) for b, s in zip(given, scales)]
            representation, probs = self._heads(features, detector_boxes, image_list.image_sizes)
            counts = [len(b) for b in given]
            return [
                regions_from_scores(f, b, p, self.background_index, self.config.class_probs)
                for f, b, p in zip(representation.split(counts), given, probs.split(counts))
            ]

        return self._grouped(images, run)


def _clip(boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes


def build(config: ExtractConfig, device: torch.device) -> TorchvisionBackend:
    return TorchvisionBackend(config, device)


__all__ = ["TorchvisionBackend", "build", "build_model", "class_names", "model_identity", "published_weights",
           "weights_on_machine"]
