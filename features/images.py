"""Finding images in a folder and decoding them robustly (this runs in DataLoader workers).

An image id is the file's path relative to the folder, without extension, '/'-separated
(``DIR/val/42.jpg`` -> ``"val/42"``). Decoding never raises for a bad file: it returns the
reason, so one broken image is listed in the failures file instead of stopping a long run.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps

from vlbert.errors import InputError

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif",
)


class ImageListError(InputError):
    """The image folder cannot be used as given (missing, empty, clashing ids)."""


def list_images(images_dir: str | os.PathLike) -> dict[str, Path]:
    """Map image id -> path for every file with an image extension under `images_dir` (recursive).

    Hidden files and folders are ignored. Two files with one id (``a.jpg`` and ``a.png``) are an
    error, since both would be written under the same key.
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise ImageListError(f"image folder {root} does not exist or is not a folder")
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = Path(dirpath) / name
            image_id = path.relative_to(root).with_suffix("").as_posix()
            if image_id in found:
                raise ImageListError(
                    f"{found[image_id]} and {path} both have image id {image_id!r}; rename one of them"
                )
            found[image_id] = path
    if not found:
        raise ImageListError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    return found


@contextlib.contextmanager
def _own_pixel_limit() -> Iterator[None]:
    # PIL's own size check fires on open (header only); decode_image applies max_pixels itself
    # before any pixel is decoded, so PIL's global is switched off meanwhile, then restored.
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Transparency is composited on white; high bit depths are rescaled."""
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I", "F") or mode.startswith("I;16"):
        values = np.asarray(image).astype(np.float64)
        top = 65535.0 if (mode.startswith("I;16") or values.max(initial=0) > 255) else 255.0
        if mode == "F":
            low, high = float(values.min(initial=0)), float(values.max(initial=1))
            values, top = values - low, max(high - low, 1e-12)
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode != "RGB":
        return image.convert("RGB")
    return image


def target_scale(width: int, height: int, min_size: int, max_size: int) -> float:
    """The detector's resize factor: shortest side to min_size unless the longest exceeds max_size."""
    short, long = min(width, height), max(width, height)
    return min(min_size / short, max_size / long)


def decode_image(path: str | os.PathLike, min_size: int, max_size: int,
                 max_pixels: int = 250_000_000) -> tuple[np.ndarray, int, int]:
    """Decode to RGB uint8 [H, W, 3] with EXIF orientation applied; return (pixels, width, height).

    width and height are the oriented image's true size (boxes are in these pixels). Images larger
    than the detector's input are shrunk here, in the worker, so that large photos cost neither
    main-process time nor inter-process traffic; small ones are left for the detector to enlarge.
    Raises on undecodable input (the caller records the reason).
    """
    with _own_pixel_limit(), Image.open(path) as image:
        if image.width * image.height > max_pixels:
            raise ValueError(f"{image.width}x{image.height} pixels exceeds max_image_pixels={max_pixels} "
                             "(raise it with --max-image-pixels if this image is wanted)")
        full_w, full_h = image.size
        scale = target_scale(full_w, full_h, min_size, max_size)
        if scale < 0.5 and image.format == "JPEG":
            # decode at a reduced DCT scale (still at least the size we need): much faster for big photos
            image.draft("RGB", (int(full_w * scale) + 1, int(full_h * scale) + 1))
        image.load()
        oriented = ImageOps.exif_transpose(image)
        # the true (oriented) size, whatever draft() decoded
        swapped = oriented.size != image.size
        width, height = (full_h, full_w) if swapped else (full_w, full_h)
        rgb = _to_rgb(oriented)
    scale = target_scale(width, height, min_size, max_size)
    if scale < 1.0:
        new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if new_size != rgb.size:
            rgb = rgb.resize(new_size, Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8), width, height


@dataclass
class DecodedImage:
    """One dataset item: pixels [3, H', W'] uint8 (None when undecodable) and the true size."""

    index: int
    image_id: str
    path: str
    pixels: torch.Tensor | None
    width: int = 0
    height: int = 0
    error: str | None = None

    def pin_memory(self) -> "DecodedImage":
        """Called by a DataLoader with pin_memory=True: page-locked pixels copy to the GPU asynchronously."""
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


class ImageFolderDataset(torch.utils.data.Dataset):
    """Decodes (image id, path) pairs in DataLoader workers; a bad file becomes an item with an error."""

    def __init__(self, items: list[tuple[str, Path]], min_size: int, max_size: int,
                 max_pixels: int = 250_000_000) -> None:
        self.items = items
        self.min_size = min_size
        self.max_size = max_size
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> DecodedImage:
        image_id, path = self.items[index]
        try:
            if os.path.getsize(path) == 0:
                raise ValueError("empty file (0 bytes)")
            pixels, width, height = decode_image(path, self.min_size, self.max_size, self.max_pixels)
        except Exception as err:  # noqa: BLE001 - any decoder error means: skip and list this file
            reason = f"{type(err).__name__}: {err}".strip()
            return DecodedImage(index, image_id, str(path), None, error=reason)
        tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
        return DecodedImage(index, image_id, str(path), tensor, width, height)


def collate_decoded(items: list[DecodedImage]) -> list[DecodedImage]:
    """Images differ in size; the backend batches them itself."""
    return items
