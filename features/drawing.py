"""Pictures of an image's regions, drawn with matplotlib's Agg renderer (no display needed).

An image is shown in its own pixel coordinates (`show_image`: pixel (x, y) covers
[x, x + 1] x [y, y + 1]), so boxes from a feature store, x1 y1 x2 y2 in the pixels of the image
they were extracted from, are drawn as they are, whatever size the picture is shown at. Without
the image file, `blank_canvas` stands in for it at the stored size. Used by `vlbert show-features`
(vlbert.features.show) and `vlbert answer --save-image`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib import patheffects
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from vlbert.errors import InputError
from vlbert.features.images import decode_image

DPI = 100
# Pictures' longest side in pixels: small images (the synthetic world's 128 px) are enlarged so
# tags stay legible, large photos shrunk so files stay small.
MIN_LONG_SIDE, MAX_LONG_SIDE = 640, 1600
CANVAS_GREY = (0.86, 0.86, 0.86)
# Distinct colours that stay visible on photos and on the synthetic world's saturated shapes
# (each outline also gets a dark halo).
PALETTE = ("#ff2d95", "#00e5ff", "#ffe600", "#7cff4f", "#ff8c00", "#b388ff", "#ffffff", "#00ffa3", "#ff5252", "#40c4ff")


class PictureError(InputError):
    """An image that cannot be drawn on (missing, undecodable, or not the image of the regions)."""


def load_image(path: str | os.PathLike) -> tuple[np.ndarray, int, int]:
    """(pixels [h, w, 3] uint8, width, height) of an image file, decoded as `vlbert extract` decodes
    it (EXIF orientation applied); width, height are its true size, the pixels at most
    MAX_LONG_SIDE on their longest side."""
    path = Path(path)
    if not path.is_file():
        raise PictureError(f"image {path} does not exist")
    try:
        return decode_image(path, min_size=1 << 30, max_size=MAX_LONG_SIDE)  # shrink only, never enlarge
    except Exception as err:  # noqa: BLE001 - any decoder error: the file is not a readable image
        raise PictureError(f"cannot read image {path}: {type(err).__name__}: {err}".strip()) from None


def blank_canvas() -> np.ndarray:
    """A one-pixel grey image; `show_image` stretches it over the stored image size."""
    return np.array(CANVAS_GREY, dtype=np.float32).reshape(1, 1, 3)


def check_same_image(image_size: tuple[int, int], region_size: tuple[int, int], path: str | os.PathLike) -> None:
    """The image to draw on must be the one the regions came from, or a resized copy of it (same
    aspect ratio, within 2%): its pixels are then stretched over the regions' coordinates."""
    (w, h), (rw, rh) = image_size, region_size
    if abs((w / h) / (rw / rh) - 1) > 0.02:
        raise PictureError(f"image {path} is {w}x{h} but the regions were found in a {rw}x{rh} image; "
                           "is it the right image?")


def display_size(width: int, height: int) -> tuple[int, int]:
    """Picture size in pixels for an image of width x height: longest side in [MIN_LONG_SIDE, MAX_LONG_SIDE]."""
    long = max(width, height)
    scale = min(max(1.0, MIN_LONG_SIDE / long), MAX_LONG_SIDE / long)
    return max(1, round(width * scale)), max(1, round(height * scale))


def show_image(ax, pixels: np.ndarray, width: int, height: int) -> None:
    """Show `pixels` (any resolution) over [0, width] x [0, height] of `ax`, y down, without axes."""
    long = max(pixels.shape[0], pixels.shape[1])
    # enlarged small images stay sharp-edged; shrunk or real-size ones are smoothed
    ax.imshow(pixels, extent=(0, width, height, 0), interpolation="nearest" if long < MIN_LONG_SIDE else "antialiased")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()


def text_color(color) -> str:
    """Black or white, whichever reads better on `color`."""
    r, g, b = to_rgb(color)
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def draw_boxes(
    ax,
    boxes: np.ndarray,
    colors: Sequence,
    linewidth: float = 2.0,
    tags: Sequence[str | None] | None = None,
    fontsize: float = 9.0,
    linestyle: str = "-",
    halo: float = 1.6,
) -> None:
    """Outline boxes [N, 4] (x1 y1 x2 y2, in the data coordinates of `ax`, i.e. image pixels after
    `show_image`) in colors[i], with a dark halo `halo` points wider, and write tags[i] (when given) at each box's
    top-left corner (top-right for boxes near the right edge), inside the box, on a patch of the box's colour. Adds artists only: the
    same call draws the same picture."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    left, right = sorted(ax.get_xlim())
    effects = [patheffects.Stroke(linewidth=linewidth + halo, foreground=(0, 0, 0, 0.75)), patheffects.Normal()] if halo else []
    for index, (x1, y1, x2, y2) in enumerate(boxes):
        color = colors[index]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=linewidth,
                               linestyle=linestyle, path_effects=effects))
        tag = tags[index] if tags is not None else None
        if tag:
            # a box starting near the right edge has its tag at its top-right corner, so the tag stays in view
            at_right = x1 > left + 0.75 * (right - left)
            ax.text(x2 if at_right else x1, y1, tag, fontsize=fontsize, color=text_color(color),
                    ha="right" if at_right else "left", va="top", clip_on=True,
                    bbox=dict(boxstyle="square,pad=0.15", facecolor=color, edgecolor="none", alpha=0.85))


def image_figure(width: int, height: int) -> tuple[Figure, object]:
    """A figure of exactly display_size(width, height) pixels whose one axes fills it."""
    w, h = display_size(width, height)
    figure = Figure(figsize=(w / DPI, h / DPI), dpi=DPI)
    return figure, figure.add_axes((0, 0, 1, 1))


def figure_pixels(figure: Figure) -> np.ndarray:
    """The rendered figure as [H, W, 3] uint8."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure(figure: Figure, path: str | os.PathLike) -> Path:
    """Write the figure (format from the suffix: .png, .pdf, .svg, ...), making parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path
