"""The extraction config: one typed dataclass, read from YAML and the command line by jsonargparse.

The same machinery as the other stages' LightningCLI: `add_config_arguments` puts every
ExtractConfig field on a jsonargparse parser as a flat, typed key documented by the class
docstring; `vlbert extract` (features/extract.py) and `load_config` both read settings through
it, and ExtractConfig.__post_init__ is the one place values are checked.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from jsonargparse import ArgumentParser, Namespace

from vlbert.errors import InputError
from vlbert.features.boxes import BoxSelection

BACKENDS = ("torchvision", "detectron2", "patches", "grid")
DETECTORS = ("torchvision", "detectron2")  # the backends that choose boxes (and pool given ones)
TORCHVISION_MODELS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2")
# grid: torchvision's ResNet family, whose last stage (layer4) is the C5 map
GRID_MODELS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
    "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
)
DTYPES = ("float16", "float32")

# Fields that change what is written; everything else (batch size, workers, device) only changes speed.
# Weights and detectron2 config files enter provenance by content hash (see the backends), not by path.
OUTPUT_FIELDS = (
    "backend", "model", "detectron2_setup", "detectron2_opts", "min_size", "max_size", "proposals",
    "score_threshold", "nms_iou", "min_boxes", "max_boxes", "num_boxes", "dtype", "class_probs",
)
# The patch and grid backends choose no boxes: their output depends on these fields instead.
REGION_FREE_OUTPUT_FIELDS = {
    "patches": ("backend", "model", "min_size", "max_size", "dtype", "layer", "cls_token"),
    "grid": ("backend", "model", "min_size", "max_size", "dtype", "grid_size"),
}


class ConfigError(InputError):
    """An extraction config that cannot work; the message names the key and how to fix it."""


@dataclass
class ExtractConfig:
    """Extraction settings: keys of a --config file (configs/extract/*.yaml), each also a flag.

    Attributes:
        backend: torchvision or detectron2 (detectors: boxes chosen, or given with --boxes), patches
            (a transformers vision model's patch tokens) or grid (a torchvision CNN's C5 map pooled to
            grid_size x grid_size cells).
        model: torchvision: fasterrcnn_resnet50_fpn or fasterrcnn_resnet50_fpn_v2; patches: a
            transformers model directory or hub name (ViT, DINOv2, CLIP / SigLIP or their vision
            towers); grid: a torchvision ResNet (resnet50, resnet101, resnext101_32x8d, ...).
        weights: default (the backend's published weights, downloaded by torchvision on first use;
            patches: the weights of the model directory), a torchvision weights name (e.g.
            IMAGENET1K_V1), a local weights file, or none (random weights: tests only).
        seed: Initialises random weights (weights: none) identically in every process.
        detectron2_config: detectron2 backend only: its config .yaml file.
        detectron2_setup: detectron2 backend only: modules to import, or "module:function" to call
            with the cfg, before the config is read.
        detectron2_opts: detectron2 backend only: config overrides, e.g. [MODEL.RPN.NMS_THRESH, 0.7].
        class_names_file: detectron2 backend only: the foreground class names, one per line, in class
            id order (the first of comma-separated synonyms is used), e.g. the VG objects vocabulary.
        attribute_names_file: detectron2 backend only: the attribute names, one per line, in id order.
        layer: patches backend only: which hidden state, as an index into the model's hidden states
            (0: the patch embeddings, -1: the last block, -2: the penultimate, as CLIP-ViL / LLaVA
            use); null: the model's output (after its final norm, where it has one).
        cls_token: patches backend only: also store the CLS token, as the first region, boxed by the
            whole image.
        grid_size: grid backend only: the C5 map is average-pooled to grid_size x grid_size cells.
        min_size: Shorter image side after resizing, in pixels (patches: images are decoded at least
            this large, then resized to the model's input size).
        max_size: Longest image side after resizing, in pixels (at least min_size).
        proposals: RPN proposals per image that become candidate regions.
        score_threshold: Adaptive selection: keep regions whose best class score is at least this.
        nms_iou: IoU of the per-class non-maximum suppression.
        min_boxes: Adaptive selection: at least this many regions per image.
        max_boxes: Adaptive selection: at most this many regions per image.
        num_boxes: A fixed number of regions per image (e.g. 36); null for adaptive selection
            (score_threshold, min_boxes, max_boxes).
        dtype: Stored feature precision: float16 or float32.
        class_probs: Store each region's class distribution.
        batch_size: Images per detector batch.
        num_workers: DataLoader processes decoding images (0: in the main process).
        device: auto (cuda if available, else cpu), cpu, cuda or cuda:N.
        flush_every: Images per part file (the most a kill -9 can lose is this plus a batch).
        max_image_pixels: Larger images are listed as failures instead of exhausting memory.
    """

    backend: str = "torchvision"
    model: str = "fasterrcnn_resnet50_fpn"
    weights: Optional[str] = "default"
    seed: int = 0
    detectron2_config: Optional[str] = None
    detectron2_setup: list[str] = field(default_factory=list)
    detectron2_opts: list[Union[str, bool, int, float]] = field(default_factory=list)
    class_names_file: Optional[str] = None
    attribute_names_file: Optional[str] = None
    layer: Optional[int] = None
    cls_token: bool = False
    grid_size: int = 7
    min_size: int = 800
    max_size: int = 1333
    proposals: int = 300
    score_threshold: float = 0.2
    nms_iou: float = 0.3
    min_boxes: int = 10
    max_boxes: int = 100
    num_boxes: Optional[int] = None
    dtype: str = "float16"
    class_probs: bool = True
    batch_size: int = 4
    num_workers: int = 2
    device: str = "auto"
    flush_every: int = 256
    max_image_pixels: int = 250_000_000

    def __post_init__(self) -> None:
        self.detectron2_opts = [str(v) for v in self.detectron2_opts]  # detectron2's merge_from_list parses them
        if self.weights is None or str(self.weights).lower() in ("none", "null", "random"):
            self.weights = "none"
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend: {self.backend!r} is not one of {BACKENDS}")
        if self.backend == "torchvision" and self.model not in TORCHVISION_MODELS:
            raise ConfigError(f"model: {self.model!r} is not a torchvision model here; use one of {TORCHVISION_MODELS}")
        if self.backend == "detectron2" and not self.detectron2_config:
            raise ConfigError("backend: detectron2 needs detectron2_config: <path to a detectron2 config .yaml>")
        if self.backend == "patches" and self.model in TORCHVISION_MODELS:
            raise ConfigError("backend: patches needs model: <a transformers model directory or hub name>, "
                              "e.g. openai/clip-vit-base-patch32")
        if self.backend == "grid" and self.model not in GRID_MODELS:
            raise ConfigError(f"model: {self.model!r} is not a grid model; use one of {GRID_MODELS}")
        if self.grid_size < 1:
            raise ConfigError(f"grid_size: must be >= 1, got {self.grid_size}")
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

    @property
    def detector(self) -> bool:
        """True for the backends that choose boxes (torchvision, detectron2)."""
        return self.backend in DETECTORS

    def output_settings(self) -> dict[str, Any]:
        """The fields that decide the file's content (recorded in, and compared through, provenance)."""
        return {name: getattr(self, name) for name in REGION_FREE_OUTPUT_FIELDS.get(self.backend, OUTPUT_FIELDS)}


FIELDS = tuple(f.name for f in dataclasses.fields(ExtractConfig))


class SettingsParser(ArgumentParser):
    """A jsonargparse parser whose dumps (``--print_config``) are checked, normalised ExtractConfigs."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("exit_on_error", False)  # errors raise argparse.ArgumentError: one line, no usage dump
        super().__init__(*args, **kwargs)

    def dump(self, cfg: Namespace, *args, **kwargs) -> str:
        cfg = cfg.clone()
        for name, value in config_from(cfg).to_dict().items():  # ConfigError: nothing invalid is printed
            cfg[name] = value
        return super().dump(cfg, *args, **kwargs)


def add_config_arguments(parser: ArgumentParser) -> None:
    """Every ExtractConfig field as a flat key (`--min_size 600`, `min_size: 600` in a --config file)."""
    parser.add_class_arguments(ExtractConfig, as_group=True, instantiate=False)


def config_from(cfg: Namespace | dict[str, Any]) -> ExtractConfig:
    """The ExtractConfig of a parsed namespace's fields (other keys, e.g. the CLI's --images, are ignored)."""
    return ExtractConfig(**{name: cfg[name] for name in FIELDS if name in cfg})


def settings_parser() -> SettingsParser:
    """A parser of the ExtractConfig fields only: what `load_config` reads a YAML file with."""
    parser = SettingsParser(prog="vlbert extract settings")
    add_config_arguments(parser)
    return parser


def describe_error(err: BaseException, known: tuple[str, ...] = FIELDS) -> str:
    """One line naming the key, from a jsonargparse error (which may span several lines)."""
    text = str(err)
    unknown = re.search(r"Option '([^']+)' is not accepted", text) or re.search(r"Key '([^']+)' is not expected", text)
    if unknown:
        key = unknown.group(1)
        close = difflib.get_close_matches(key, known, n=1)
        return (f"unknown key {key!r}{f' (did you mean {close[0]}?)' if close else ''}. "
                f"Known settings: {', '.join(known)}")
    flag = re.match(r"unrecognized arguments: --([\w.-]+)", text)
    if flag:
        key = flag.group(1)
        close = difflib.get_close_matches(key.replace("-", "_"), known, n=1)
        return f"unknown key --{key}{f' (did you mean --{close[0]}?)' if close else ''}"
    bad = re.match(r'Parser key "([^"]+)":\s*(.*)', text, re.S)
    if bad:
        key, detail = bad.groups()
        expected = re.findall(r"Expected an? <class '(\w+)'>", detail)
        got = re.search(r"(?:Got|Given) value: (.*)", detail)
        if expected and got:
            types = " or ".join("null" if t == "NoneType" else t for t in dict.fromkeys(expected))
            return f"bad value for {key}: expected {types}, got {got.group(1).strip()!r}"
        return f"bad value for {key}: {' '.join(detail.split())}"
    return " ".join(text.split())


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ExtractConfig:
    """ExtractConfig from a YAML file (None: defaults) with `overrides` on top; unknown keys are errors."""
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"extraction config {path} does not exist (see configs/extract/ for examples)")
    where = "the defaults" if path is None else str(path)
    if overrides:
        where += " + command-line flags"
    parser = settings_parser()
    try:
        cfg = parser.get_defaults() if path is None else parser.parse_path(path)
        if overrides:
            values = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in overrides.items()}
            cfg = parser.parse_object(values, namespace=cfg)
        return config_from(cfg)
    except argparse.ArgumentError as err:
        raise ConfigError(f"{where}: {describe_error(err)}") from None
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
