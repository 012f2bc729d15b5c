"""Drawing a scene with PIL. No anti-aliasing, so every object pixel has exactly its colour."""
from __future__ import annotations

from PIL import Image, ImageDraw

from .scene import COLORS, Scene, SceneObject


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    x1, y1, x2, y2 = obj.box
    right, bottom = x2 - 1, y2 - 1  # PIL includes both end points; the box end is exclusive
    cx, cy = (x1 + right) / 2.0, (y1 + bottom) / 2.0
    fill = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse((x1, y1, right, bottom), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x1, y1, right, bottom), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(x1, bottom), (right, bottom), (cx, y1)], fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(cx, y1), (right, cy), (cx, bottom), (x1, cy)], fill=fill)
    elif obj.shape == "cross":
        arm = max(1.0, (x2 - x1) / 6.0)  # half the bar thickness: a third of the side in all
        draw.rectangle((x1, cy - arm, right, cy + arm), fill=fill)
        draw.rectangle((cx - arm, y1, cx + arm, bottom), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def render_scene(scene: Scene) -> Image.Image:
    """RGB image of the scene: flat grey background, one filled shape per object."""
    image = Image.new("RGB", (scene.width, scene.height), scene.background)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj)
    return image
