"""Scene sampling: which shapes, where, in which colour and size. Pure data, no drawing.

Every image draws from its own generator seeded by ``(seed, index)``, so a world of 20
images is exactly the first 20 images of a world of 600 with the same seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vlbert.errors import InputError

# Saturated colours that stay far apart from each other and from the grey background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 50, 180),
    "orange": (250, 130, 20),
    "cyan": (20, 200, 210),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
SIZES: tuple[str, ...] = ("small", "large")
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

# Object side as a fraction of the image side, per size: (low, high).
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.13, 0.17), "large": (0.23, 0.28)}
MIN_OBJECTS, MAX_OBJECTS = 2, 6
MIN_IMAGE_SIZE = 48

# Primary relation of a subject to an object (by the larger of the centre offsets).
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")


def num_classes() -> int:
    """Region classes: 0 = background, then one per (colour, shape)."""
    return 1 + len(COLOR_NAMES) * len(SHAPES)


def class_id(color: str, shape: str) -> int:
    """Class index of a (colour, shape) pair, 1-based (0 is background)."""
    return 1 + COLOR_NAMES.index(color) * len(SHAPES) + SHAPES.index(shape)


def class_name(index: int) -> str:
    if index == 0:
        return "background"
    color, shape = divmod(index - 1, len(SHAPES))
    return f"{COLOR_NAMES[color]} {SHAPES[shape]}"


@dataclass
class SceneObject:
    color: str
    shape: str
    size: str
    box: tuple[int, int, int, int]  # x1 y1 x2 y2, absolute pixels; the drawn area is x1 <= x < x2

    @property
    def center(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2.0, (y1 + y2) / 2.0

    @property
    def class_id(self) -> int:
        return class_id(self.color, self.shape)

    def position(self, width: int, height: int) -> tuple[str, str]:
        """Coarse 3x3 grid cell of the centre: (row in top/middle/bottom, column in left/center/right)."""
        cx, cy = self.center
        row = ("top", "middle", "bottom")[min(2, int(3 * cy / height))]
        col = ("left", "center", "right")[min(2, int(3 * cx / width))]
        return row, col

    def to_dict(self, width: int, height: int) -> dict:
        row, col = self.position(width, height)
        return {
            "color": self.color,
            "shape": self.shape,
            "size": self.size,
            "box": list(self.box),
            "center": list(self.center),
            "position": [row, col],
            "class_id": self.class_id,
        }


@dataclass
class Scene:
    image_id: int
    width: int
    height: int
    background: tuple[int, int, int]
    objects: list[SceneObject] = field(default_factory=list)

    def relation(self, subject: int, obj: int) -> str:
        """Primary relation of object ``subject`` to object ``obj``: one of RELATIONS."""
        sx, sy = self.objects[subject].center
        ox, oy = self.objects[obj].center
        dx, dy = sx - ox, sy - oy
        if abs(dx) >= abs(dy):
            return "left of" if dx < 0 else "right of"
        return "above" if dy < 0 else "below"

    def to_dict(self) -> dict:
        n = len(self.objects)
        return {
            "image_id": self.image_id,
            "file_name": f"{self.image_id}.png",
            "width": self.width,
            "height": self.height,
            "background": list(self.background),
            "objects": [o.to_dict(self.width, self.height) for o in self.objects],
            "relations": [
                [i, self.relation(i, j), j] for i in range(n) for j in range(n) if i != j
            ],
        }


def _overlaps(box: tuple[int, int, int, int], others: list[SceneObject], gap: int) -> bool:
    x1, y1, x2, y2 = box
    for o in others:
        a1, b1, a2, b2 = o.box
        if x1 < a2 + gap and a1 < x2 + gap and y1 < b2 + gap and b1 < y2 + gap:
            return True
    return False


def sample_scene(rng: np.random.Generator, image_id: int, image_size: int) -> Scene:
    """2-6 non-overlapping objects with uniformly drawn colour, shape and size."""
    if image_size < MIN_IMAGE_SIZE:
        raise InputError(f"image_size {image_size} is too small to draw shapes; use at least {MIN_IMAGE_SIZE}")
    grey = int(rng.integers(200, 236))
    scene = Scene(image_id=image_id, width=image_size, height=image_size, background=(grey, grey, grey))
    target = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    margin = max(2, image_size // 32)
    gap = max(2, image_size // 40)
    for _ in range(target):
        color = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        size = SIZES[int(rng.integers(len(SIZES)))]
        low, high = SIZE_RANGES[size]
        side = int(round(rng.uniform(low, high) * image_size))
        for _attempt in range(100):
            x1 = int(rng.integers(margin, image_size - margin - side))
            y1 = int(rng.integers(margin, image_size - margin - side))
            box = (x1, y1, x1 + side, y1 + side)
            if not _overlaps(box, scene.objects, gap):
                scene.objects.append(SceneObject(color, shape, size, box))
                break
    if len(scene.objects) < MIN_OBJECTS:  # practically unreachable at >= 48 px, but never emit a degenerate scene
        raise RuntimeError(f"could not place {MIN_OBJECTS} objects in a {image_size}px image")
    return scene
