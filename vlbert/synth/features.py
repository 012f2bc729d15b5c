"""Feature-level regions for the synthetic world: what a detector would give, without a detector.

Each object becomes one region whose feature is a fixed random linear projection of its
attributes (one-hot colour, shape, size, 3x3 position cell) plus Gaussian noise; two
background regions follow (the whole image, and a random empty-ish crop). The projection
depends only on ``projection_seed`` (not the world seed), so worlds with different seeds
share one feature space and a model trained on one can be evaluated on another.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlbert.featstore import RegionRecord

from .scene import COLOR_NAMES, SHAPES, SIZES, Scene, num_classes

# attribute layout: colours | shapes | sizes | 3 rows | 3 columns | [background, whole-image]
_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "center", "right")
ATTRIBUTE_DIM = len(COLOR_NAMES) + len(SHAPES) + len(SIZES) + 3 + 3 + 2
_BACKGROUND, _WHOLE = ATTRIBUTE_DIM - 2, ATTRIBUTE_DIM - 1


@dataclass(frozen=True)
class FeatureSettings:
    feature_dim: int = 64
    noise_std: float = 0.3  # per dimension; the signal has unit scale per dimension
    class_noise_std: float = 1.0  # on the class logits; the true class gets +`class_peak`
    class_peak: float = 4.0
    projection_seed: int = 0


def projection(settings: FeatureSettings) -> np.ndarray:
    """Fixed [ATTRIBUTE_DIM, feature_dim] matrix; rows scaled so an object's feature has ~unit variance."""
    rng = np.random.default_rng([settings.projection_seed, 7919])
    return rng.standard_normal((ATTRIBUTE_DIM, settings.feature_dim)) / 2.0  # ~4 active attributes


def attributes(scene: Scene) -> np.ndarray:
    """[N, ATTRIBUTE_DIM] multi-hot attribute vectors of the scene's objects."""
    out = np.zeros((len(scene.objects), ATTRIBUTE_DIM), dtype=np.float64)
    base_shape = len(COLOR_NAMES)
    base_size = base_shape + len(SHAPES)
    base_row = base_size + len(SIZES)
    base_col = base_row + 3
    for i, obj in enumerate(scene.objects):
        row, col = obj.position(scene.width, scene.height)
        out[i, COLOR_NAMES.index(obj.color)] = 1
        out[i, base_shape + SHAPES.index(obj.shape)] = 1
        out[i, base_size + SIZES.index(obj.size)] = 1
        out[i, base_row + _ROWS.index(row)] = 0.5  # position is a weaker cue than identity
        out[i, base_col + _COLS.index(col)] = 0.5
    return out


def scene_regions(
    scene: Scene, rng: np.random.Generator, settings: FeatureSettings, weights: np.ndarray
) -> RegionRecord:
    """Regions of one scene: objects first (in scene order), then the whole image, then a distractor crop."""
    attrs = attributes(scene)
    whole = np.zeros(ATTRIBUTE_DIM)
    whole[: _BACKGROUND] = attrs[:, :_BACKGROUND].mean(0) * 0.5  # a blurred summary of the scene
    whole[_WHOLE] = 1
    distractor = np.zeros(ATTRIBUTE_DIM)
    distractor[_BACKGROUND] = 1
    all_attrs = np.vstack([attrs, whole, distractor])
    features = all_attrs @ weights + settings.noise_std * rng.standard_normal((len(all_attrs), settings.feature_dim))

    side = scene.width
    w = int(rng.integers(side // 6, side // 3))
    h = int(rng.integers(side // 6, side // 3))
    x1, y1 = int(rng.integers(0, side - w)), int(rng.integers(0, scene.height - h))
    boxes = np.array(
        [list(o.box) for o in scene.objects] + [[0, 0, scene.width, scene.height], [x1, y1, x1 + w, y1 + h]],
        dtype=np.float32,
    )

    labels = np.array([o.class_id for o in scene.objects] + [0, 0], dtype=np.int64)
    c = num_classes()
    logits = settings.class_noise_std * rng.standard_normal((len(labels), c))
    logits[np.arange(len(labels)), labels] += settings.class_peak
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    return RegionRecord(
        image_id=str(scene.image_id),
        features=features.astype(np.float32),
        boxes=boxes,
        image_w=scene.width,
        image_h=scene.height,
        class_probs=probs.astype(np.float32),
        labels=labels,
    )


def provenance(seed: int, settings: FeatureSettings) -> dict:
    return {
        "backend": "synthetic",
        "generator": "vlbert.synth",
        "seed": seed,
        "feature_dim": settings.feature_dim,
        "noise_std": settings.noise_std,
        "class_noise_std": settings.class_noise_std,
        "class_peak": settings.class_peak,
        "projection_seed": settings.projection_seed,
        "num_classes": num_classes(),
        "regions": "one per object (scene order), then the whole image, then a background crop",
    }
