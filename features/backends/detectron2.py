"""detectron2 Faster R-CNN as a region-feature extractor (optional: detectron2 is not on PyPI).

Any detectron2 config + weights file works, C4 or FPN. For C4 models (the Visual Genome
ResNet-101 C4 detector behind the published bottom-up-attention / LXMERT / UNITER / VisualBERT
features: 1600 object classes + background, 2048-d) the region feature is the res5 output
mean-pooled over the RoI grid, the vector the classifier reads; for FPN models it is the box
head's output. Box selection is the bottom-up-attention recipe (vlbert.features.boxes).
detectron2 orders classes foreground first, background last. Where the box predictor has an
attribute head (the VG model of py-bottom-up-attention: its predictor returns class logits,
attribute logits, box deltas), each region also gets its top attribute and that attribute's
probability (softmax over the attributes without the last, "no attribute", column, as that fork's
demos do). Class and attribute names come from `class_names_file` / `attribute_names_file` (for the
VG model: the fork's demo/data/genome/1600-400-20/ vocabularies, named in
configs/extract/detectron2_vg.yaml), else from the test dataset's detectron2 metadata.
Images run in groups of one padded input shape (`by_input_shape`), so no image is padded to another's.

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

from vlbert.features.backends import (
    ImageRegions, by_input_shape, download_error, regions_from_scores, seeded, sha256_file,
)
from vlbert.features import names
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
    for name in ("class_names_file", "attribute_names_file"):
        if (names_path := getattr(config, name)) is not None:
            if not Path(names_path).is_file():
                raise ConfigError(f"{name}: {names_path} does not exist")
            identity[name.removesuffix("_file")] = {"file": Path(names_path).name, "sha256": sha256_file(names_path)}
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


def read_names(path: str, what: str) -> list[str]:
    """features/names.py's reader (shared with import-tsv --class-names), failing as a ConfigError."""
    return names.read_names(path, what, ConfigError)


def _metadata_classes(cfg) -> list[str] | None:
    """thing_classes of the cfg's first test dataset, where detectron2 has them registered."""
    from detectron2.data import MetadataCatalog

    datasets = list(cfg.DATASETS.TEST)
    if not datasets:
        return None
    return list(MetadataCatalog.get(datasets[0]).get("thing_classes", [])) or None


def _names(config: ExtractConfig, cfg, num_classes: int, num_attributes: int) -> tuple[list | None, list | None]:
    """(class names for the class_probs columns, background last; attribute names). A names file
    that does not fit the model is an error (the wrong vocabulary); metadata that does not is unused."""
    if config.class_names_file:
        classes = read_names(config.class_names_file, "class_names_file")
        if len(classes) != num_classes - 1:
            raise ConfigError(f"class_names_file: {len(classes)} names in {config.class_names_file} for a model of "
                              f"{num_classes - 1} foreground classes")
    else:
        classes = _metadata_classes(cfg)
        classes = classes if classes and len(classes) == num_classes - 1 else None
    attributes = None
    if config.attribute_names_file:
        attributes = read_names(config.attribute_names_file, "attribute_names_file")
        if len(attributes) != num_attributes:
            raise ConfigError(f"attribute_names_file: {len(attributes)} names in {config.attribute_names_file} for a "
                              f"model of {num_attributes} attributes")
    return (None if classes is None else [*classes, names.BACKGROUND]), attributes


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
            self.model = seeded(config.seed, lambda: build_model(self.cfg))
        else:
            self.model = build_model(self.cfg)
            _load_weights(DetectionCheckpointer(self.model), path)
        self.model.eval()
        predictor = self.model.roi_heads.box_predictor
        self.feature_dim = int(predictor.cls_score.in_features)
        self.num_classes = int(predictor.cls_score.out_features)  # foreground classes + background
        self.background_index = self.num_classes - 1
        self.bgr = self.cfg.INPUT.FORMAT.upper() == "BGR"
        attribute_head = getattr(predictor, "attr_score", None)  # py-bottom-up-attention's VG predictor
        # its last column is "no attribute", which is never reported
        self.num_attributes = int(attribute_head.out_features) - 1 if attribute_head is not None else 0
        self.class_names, self.attribute_names = _names(config, self.cfg, self.num_classes, self.num_attributes)

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

    def _grouped(self, images: list[DecodedImage], run) -> list[ImageRegions]:
        """run(indices, batch, features, scales) on each group of images whose padded inputs have one
        shape: each image is normalised and padded alone, so stacking a group pads nothing more."""
        from detectron2.structures import ImageList

        inputs = [self.model.preprocess_image([{"image": self._resized(image)}]) for image in images]

        def group(indices: list[int]) -> list[ImageRegions]:
            batch = ImageList(torch.cat([inputs[i].tensor for i in indices]), [inputs[i].image_sizes[0] for i in indices])
            features = self.model.backbone(batch.tensor)
            scales = [torch.tensor([images[i].width / w, images[i].height / h] * 2, dtype=torch.float32)
                      for i, (h, w) in zip(indices, batch.image_sizes)]
            return run(indices, batch, features, scales)

        return by_input_shape([tuple(x.tensor.shape) for x in inputs], group)

    def _regions(self, features, boxes: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(representation [K, D], class probabilities [K, C+1], attribute probabilities [K, A] or None)."""
        heads = self.model.roi_heads
        if hasattr(heads, "res5") and hasattr(heads, "_shared_roi_transform"):  # C4: res5 on each RoI
            grid = heads._shared_roi_transform([features[f] for f in heads.in_features], boxes)
            representation = grid.mean(dim=[2, 3])  # [sum K, 2048] pooled to 1x1
        else:  # FPN: the box head's output
            pooled = heads.box_pooler([features[f] for f in heads.box_in_features], boxes)
            representation = heads.box_head(pooled)
        outputs = heads.box_predictor(representation)
        logits = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        attributes = None
        if self.num_attributes and isinstance(outputs, (tuple, list)) and len(outputs) == 3:
            attributes = torch.softmax(outputs[1][:, :-1].float(), dim=-1)
        return representation.flatten(1), torch.softmax(logits.float(), dim=-1), attributes

    def _pack(self, feats, boxes, probs, attributes) -> ImageRegions:
        regions = regions_from_scores(feats, boxes, probs, self.background_index, self.config.class_probs)
        if attributes is not None:
            if len(attributes):
                scores, ids = attributes.max(-1)
            else:
                scores, ids = torch.zeros(0), torch.zeros(0, dtype=torch.int64)
            regions.attributes = ids.cpu().numpy().astype("int64")
            regions.attribute_scores = scores.float().cpu().numpy()
        return regions

    @staticmethod
    def _split(tensor: torch.Tensor | None, counts: list[int]) -> list:
        return list(tensor.split(counts)) if tensor is not None else [None] * len(counts)

    @torch.inference_mode()
    def detect(self, images: list[DecodedImage]) -> list[ImageRegions]:
        def run(indices, batch, features, scales):
            proposals, _ = self.model.proposal_generator(batch, features, None)
            boxes = [p.proposal_boxes for p in proposals]
            representation, probs, attributes = self._regions(features, boxes)
            counts = [len(b) for b in boxes]
            out = []
            for i, proposal, feats, prob, attr, scale in zip(
                indices, boxes, representation.split(counts), probs.split(counts), self._split(attributes, counts), scales
            ):
                image, tensor = images[i], proposal.tensor
                keep = select_boxes(tensor, prob[:, :-1], self.config.selection)
                kept = tensor[keep].float().cpu() * scale
                kept[:, 0::2] = kept[:, 0::2].clamp(0, image.width)
                kept[:, 1::2] = kept[:, 1::2].clamp(0, image.height)
                out.append(self._pack(feats[keep], kept, prob[keep], None if attr is None else attr[keep]))
            return out

        return self._grouped(images, run)

    @torch.inference_mode()
    def pool(self, images: list[DecodedImage], boxes: list[np.ndarray]) -> list[ImageRegions]:
        from detectron2.structures import Boxes

        def run(indices, batch, features, scales):
            given = [torch.as_tensor(boxes[i], dtype=torch.float32) for i in indices]
            model_boxes = [Boxes((b / s).to(self.device)) for b, s in zip(given, scales)]
            representation, probs, attributes = self._regions(features, model_boxes)
            counts = [len(b) for b in given]
            return [self._pack(f, b, p, a) for f, b, p, a in zip(
                representation.split(counts), given, probs.split(counts), self._split(attributes, counts))]

        return self._grouped(images, run)


def build(config: ExtractConfig, device: torch.device) -> Detectron2Backend:
    _require_detectron2()
    return Detectron2Backend(config, device)
