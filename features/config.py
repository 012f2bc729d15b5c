"""The extraction config: one typed dataclass, loaded from YAML, overridable from the command line."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vlbert.features.boxes import BoxSelection

BACKENDS = ("torchvision", "detectron2")
TORCHVISION_MODELS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2")
DTYPES = ("float16", "float32")

# Fields that change what is written; everything else (batch size, workers, device) only changes speed.
# Weights and detectron2 config files enter provenance by content hash (see the backends), not by path.
OUTPUT_FIELDS = (
    "backend", "model", "detectron2_setup", "detectron2_opts", "min_size", "max_size", "proposals",
    "score_threshold", "nms_iou", "min_boxes", "max_boxes", "num_boxes", "dtype", "class_probs",
)


class ConfigError(ValueError):
    """An extraction config that cannot work; the message names the key and how to fix it."""


@dataclass
class ExtractConfig:
    """Everything `vlbert extract` needs besides the image folder and output path.

    weights: "default" (the backend's published weights, downloaded by torchvision on first
    use), a local weights file, or "none" (random weights: tests only).
    num_boxes: set for a fixed number of regions per image, null for adaptive selection
    (score_threshold, min_boxes, max_boxes).
    """

    backend: str = "torchvision"
    model: str = "fasterrcnn_resnet50_fpn"
    weights: Optional[str] = "default"
    seed: int = 0  # initialises random weights (weights: none) identically in every process
    # detectron2 backend only: config file, modules to import / "module:function(cfg)" to call first, overrides
    detectron2_config: Optional[str] = None
    detectron2_setup: list[str] = field(default_factory=list)
    detectron2_opts: list[str] = field(default_factory=list)
    min_size: int = 800
    max_size: int = 1333
    proposals: int = 300  # RPN proposals per image that become candidate regions
    score_threshold: float = 0.2
    nms_iou: float = 0.3
    min_boxes: int = 10
    max_boxes: int = 100
    num_boxes: Optional[int] = None
    dtype: str = "float16"
    class_probs: bool = True  # store each region's class distribution
    batch_size: int = 4
    num_workers: int = 2
    device: str = "auto"  # auto: cuda if available, else cpu
    flush_every: int = 256  # images per part file (the most a kill -9 can lose is this plus a batch)
    max_image_pixels: int = 250_000_000  # larger images are listed as failures instead of exhausting memory

    def __post_init__(self) -> None:
        if self.weights is None or str(self.weights).lower() in ("none", "null", "random"):
            self.weights = "none"
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend: {self.backend!r} is not one of {BACKENDS}")
        if self.backend == "torchvision" and self.model not in TORCHVISION_MODELS:
            raise ConfigError(f"model: {self.model!r} is not a torchvision model here; use one of {TORCHVISION_MODELS}")
        if self.backend == "detectron2" and not self.detectron2_config:
            raise ConfigError("backend: detectron2 needs detectron2_config: <path to a detectron2 config .yaml>")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype: {self.dtype!r} is not one of {DTYPES}")
        for name in ("min_size", "max_size", "proposals", "batch_size", "flush_every", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.min_size > self.max_size:
            raise ConfigError(f"min_size ({self.min_size}) must not exceed max_size ({self.max_size})")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers: must be >= 0, got {self.num_workers}")
        try:
            self.selection
        except ValueError as err:
            raise ConfigError(str(err)) from None

    @property
    def selection(self) -> BoxSelection:
        return BoxSelection(
            score_threshold=self.score_threshold,
            nms_iou=self.nms_iou,
            min_boxes=self.min_boxes,
            max_boxes=self.max_boxes,
            num_boxes=self.num_boxes,
        )

    @property
    def random_weights(self) -> bool:
        return self.weights == "none"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def output_settings(self) -> dict[str, Any]:
        """The fields that decide the file's content (recorded in, and compared through, provenance)."""
        return {name: getattr(self, name) for name in OUTPUT_FIELDS}


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ExtractConfig:
    """ExtractConfig from a YAML file (None: defaults) with `overrides` on top; unknown keys are errors."""
    schema = OmegaConf.structured(ExtractConfig)
    layers = [schema]
    where = "the defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"extraction config {path} does not exist (see configs/extract/ for examples)")
        layers.append(OmegaConf.load(path))
        where = str(path)
    if overrides:
        layers.append(OmegaConf.create({k: v for k, v in overrides.items()}))
        where += " + command-line flags"
    try:
        merged = OmegaConf.merge(*layers)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or getattr(err, "key", None)
        known = ", ".join(f.name for f in dataclasses.fields(ExtractConfig))
        raise ConfigError(f"{where}: bad extraction setting {key!r}: {str(err).splitlines()[0]}. "
                          f"Known settings: {known}") from None
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
