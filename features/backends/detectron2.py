"""detectron2 Faster R-CNN as a region-feature extractor (optional: detectron2 is not on PyPI).

Any detectron2 config + weights file works, C4 or FPN. For C4 models (the Visual Genome
ResNet-101 C4 detector behind the published bottom-up-attention / LXMERT / UNITER / VisualBERT
features: 1600 object classes + background, 2048-d) the region feature is the res5 output
mean-pooled over the RoI grid, the vector the classifier reads; for FPN models it is the box
head's output. Box selection is the bottom-up-attention recipe (vlbert.features.boxes).
detectron2 orders classes foreground first, background last.

Custom detectron2 components (e.g. the VG model's caffe max-pool backbone from
py-bottom-up-attention) are registered by the modules named in ``detectron2_setup``:
``"package.module"`` is imported, ``"package.module:function"`` is also called with the cfg
(to add config keys) before the config file is merged.
"""
from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vlbert.features.backends import ImageRegions, download_error, regions_from_scores, sha256_file
from vlbert.features.boxes import select_boxes
from vlbert.features.config import ConfigError, ExtractConfig
from vlbert.features.images import DecodedImage

INSTALL_HINT = (
    "the detectron2 backend needs detectron2, which is not installed (it is not on PyPI). Install it "
    "from source into this environment: see docs/extraction.md, 'Installing detectron2'"
)
RANDOM_WEIGHTS_WARNING = (
    "weights: none -> the detectron2 detector has RANDOM weights; its features are meaningless and only "
    "fit for tests. This is recorded in the output file's provenance."
)


def _require_detectron2():
    try:
        import detectron2  # noqa: F401
        from detectron2.config import get_cfg
    except ImportError as err:
        raise ConfigError(f"{INSTALL_HINT} ({err})") from None
    return get_cfg


def build_cfg(config: ExtractConfig, device: torch.device | str = "cpu"):
    """The detectron2 CfgNode: setup hooks, the config file, detectron2_opts, then our sizes."""
    get_cfg = _require_detectron2()
    path = Path(config.detectron2_config)
    if not path.is_file():
        raise ConfigError(f"detectron2_config: {path} does not exist")
    cfg = get_cfg()
    for entry in config.detectron2_setup:
        module_name, _, function_name = entry.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ConfigError(f"detectron2_setup: cannot import {module_name!r} ({err})") from None
        if function_name:
            getattr(module, function_name)(cfg)
    import yaml

    try:
        cfg.merge_from_file(str(path))
        cfg.merge_from_list(list(config.detectron2_opts))
    except (KeyError, ValueError, AssertionError, yaml.YAMLError) as err:
        raise ConfigError(
            f"detectron2_config {path}: {err}. Keys unknown to this detectron2 usually come from a fork "
            "(e.g. py-bottom-up-attention): name its config function in detectron2_setup"
        ) from None
    cfg.INPUT.MIN_SIZE_TEST = config.min_size
    cfg.INPUT.MAX_SIZE_TEST = config.max_size
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = config.proposals
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = max(int(cfg.MODEL.RPN.PRE_NMS_TOPK_TEST), config.proposals)
    cfg.MODEL.DEVICE = str(device)
    return cfg


def _weights_path(config: ExtractConfig, cfg) -> str | None:
    if config.random_weights:
        return None
    if str(config.weights).lower() == "default":
        return str(cfg.MODEL.WEIGHTS) or None
    return str(config.weights)


def model_identity(config: ExtractConfig) -> dict:
    """Provenance of the detector (config file and weights are hashed), without building it."""
    cfg = build_cfg(config)
    identity = {
        "model": f"detectron2:{Path(config.detectron2_config).name}",
        "detectron2": {"config_file": Path(config.detectron2_config).name,
                       "config_sha256": sha256_file(str(config.detectron2_config)),
                       "setup": list(config.detectron2_setup), "opts": list(config.detectron2_opts),
                       "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
                       "roi_heads": cfg.MODEL.ROI_HEADS.NAME, "input_format": cfg.INPUT.FORMAT},
        "classes": {"num_classes": int(cfg.MODEL.ROI_HEADS.NUM_CLASSES) + 1,
                    "background_index": int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)},
    }
    path = _weights_path(config, cfg)
    if path is None and config.random_weights:
        identity["weights"] = {"source": "none", "random": True, "seed": config.seed, "warning": RANDOM_WEIGHTS_WARNING}
    elif path and os.path.isfile(path):
        identity["weights"] = {"source": "file", "file": os.path.basename(path), "sha256": sha256_file(path)}
    elif path:
        identity["weights"] = {"source": "detectron2", "name": path}  # a URL the checkpointer downloads
    else:
        raise ConfigError("weights: give a detectron2 weights file (.pkl / .pth), or none for random weights")
    return identity


def _load_weights(checkpointer, path: str) -> None:
    """Load a weights file, or a URL the checkpointer downloads (through iopath, into its cache); a
    failed download (URLError, HTTPError, a timeout: all OSError) becomes one line saying what to do."""
    if os.path.isfile(path):
        checkpointer.load(path)
        return
    try:
        checkpointer.load(path)
    except OSError as err:
        try:
            from iopath.common.file_io import get_cache_dir

            cache = get_cache_dir()
        except ImportError:
            cache = "~/.torch/iopath_cache"
        name = os.path.basename(path.rstrip("/")) or "model_final.pkl"
        raise download_error(path, err, f"under {cache} (the download cache, keeping the URL's folders)",
                             f"weights: /path/to/{name}") from err


class Detectron2Backend:
    """Regions from a detectron2 GeneralizedRCNN. class_probs [N, C+1], background last."""

    def __init__(self, config: ExtractConfig, device: torch.device) -> None:
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.modeling import build_model

        self.config = config
        self.device = device
        self.cfg = build_cfg(config, device)
        path = _weights_path(config, self.cfg)
        if config.random_weights:
            warnings.warn(RANDOM_WEIGHTS_WARNING, stacklevel=2)
            state = torch.random.get_rng_state()
            torch.manual_seed(config.seed)
            try:
                self.model = build_model(self.cfg)
            finally:
                torch.random.set_rng_state(state)
        else:
            self.model = build_model(self.cfg)
            _load_weights(DetectionCheckpointer(self.model), path)
        self.model.eval()
        predictor = self.model.roi_heads.box_predictor
        self.feature_dim = int(predictor.cls_score.in_features)
        self.num_classes = int(predictor.cls_score.out_features)  # foreground classes + background
        self.background_index = self.num_classes - 1
        self.bgr = self.cfg.INPUT.FORMAT.upper() == "BGR"

    def _resized(self, image: DecodedImage) -> torch.Tensor:
        """Float [3, h, w] pixels 0..255 in the model's channel order, at detectron2's test size."""
        pixels = image.pixels.to(self.device).float()
        h, w = pixels.shape[-2:]
        scale = min(self.config.min_size / min(image.width, image.height),
                    self.config.max_size / max(image.width, image.height))
        size = (int(image.height * scale + 0.5), int(image.width * scale + 0.5))
        if size != (h, w):
            pixels = F.interpolate(pixels[None], size=size, mode="bilinear", align_corners=False,
                                   antialias=size[0] < h)[0].clamp_(0, 255)
        return pixels.flip(0) if self.bgr else pixels

    def _prepare(self, images: list[DecodedImage]):
        inputs = [{"image": self._resized(image)} for image in images]
        batch = self.model.preprocess_image(inputs)
        features = self.model.backbone(batch.tensor)
        scales = [torch.tensor([image.width / w, image.height / h] * 2, dtype=torch.float32)
                  for image, (h, w) in zip(images, batch.image_sizes)]
        return batch, features, scales

    def _regions(self, features, boxes: list) -> tuple[torch.Tensor, torch.Tensor]:
        heads = self.model.roi_heads
        if hasattr(heads, "res5") and hasattr(heads, "_shared_roi_transform"):  # C4: res5 on each RoI
            grid = heads._shared_roi_transform([features[f] for f in heads.in_features], boxes)
            representation = grid.mean(dim=[2, 3])  # [sum K, 2048] pooled to 1x1
        else:  # FPN: the box head's output
            pooled = heads.box_pooler([features[f] for f in heads.box_in_features], boxes)
            representation = heads.box_head(pooled)
        outputs = heads.box_predictor(representation)
        logits = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        return representation.flatten(1), torch.softmax(logits.float(), dim=-1)

    @torch.inference_mode()
    def detect(self, images: list[DecodedImage]) -> list[ImageRegions]:
        batch, features, scales = self._prepare(images)
        proposals, _ = self.model.proposal_generator(batch, features, None)
        boxes = [p.proposal_boxes for p in proposals]
        representation, probs = self._regions(features, boxes)
        counts = [len(b) for b in boxes]
        out = []
        for image, proposal, feats, prob, scale in zip(images, boxes, representation.split(counts),
                                                      probs.split(counts), scales):
            tensor = proposal.tensor
            keep = select_boxes(tensor, prob[:, :-1], self.config.selection)
            kept = tensor[keep].float().cpu() * scale
            kept[:, 0::2] = kept[:, 0::2].clamp(0, image.width)
            kept[:, 1::2] = kept[:, 1::2].clamp(0, image.height)
            out.append(regions_from_scores(feats[keep], kept, prob[keep], self.background_index,
                                           self.config.class_probs))
        return out

    @torch.inference_mode()
    def pool(self, images: list[DecodedImage], boxes: list[np.ndarray]) -> list[ImageRegions]:
        from detectron2.structures import Boxes

        batch, features, scales = self._prepare(images)
        given = [torch.as_tensor(b, dtype=torch.float32) for b in boxes]
        model_boxes = [Boxes((b / s).to(self.device)) for b, s in zip(given, scales)]
        representation, probs = self._regions(features, model_boxes)
        counts = [len(b) for b in given]
        return [regions_from_scores(f, b, p, self.background_index, self.config.class_probs)
                for f, b, p in zip(representation.split(counts), given, probs.split(counts))]


def build(config: ExtractConfig, device: torch.device) -> Detectron2Backend:
    _require_detectron2()
    return Detectron2Backend(config, device)
