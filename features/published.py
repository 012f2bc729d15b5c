"""What the importers of published features share (features/tsv.py, vinvl.py, lmdb_import.py):
their error type and the image sizes of formats that store only normalised boxes."""
from __future__ import annotations

import json
import os
from pathlib import Path

from vlbert.errors import InputError

# Image size given to formats that store only normalised boxes (UNITER, VinVL without predictions)
# when no --image-sizes is given: boxes are the normalised ones times this, which a power of two keeps
# exact, so the model's normalised box locations (boxes / image size) equal the published ones bit for bit.
NOMINAL_SIZE = 1024


class TsvError(InputError):
    """A line or record of published features that cannot be read; the message names the file and
    the line (or record) and says how to fix it."""


def load_image_sizes(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """{image id: (width, height)} from a JSON object ({id: [w, h]} or {id: {"width", "height"}}) or
    VinVL's hw.tsv (``key <tab> [{"height": h, "width": w}]``)."""
    path = Path(path)
    if not path.is_file():
        raise TsvError(f"--image-sizes {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            entries = list(json.loads(text).items())
        else:
            entries = [(key.strip(), json.loads(value)) for key, value in
                       (line.split("\t", 1) for line in text.splitlines() if line.strip())]
        return {str(key): _size_pair(value) for key, value in entries}
    except (ValueError, AttributeError, TypeError, KeyError, IndexError) as err:
        raise TsvError(f"--image-sizes {path}: expected a JSON object {{id: [w, h]}} or VinVL's hw.tsv "
                       f"(id, tab, [{{\"height\": h, \"width\": w}}]) ({err})") from None


def _size_pair(value) -> tuple[int, int]:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        value = value[0]
    if isinstance(value, dict):
        return int(value["width"]), int(value["height"])
    width, height = value
    return int(width), int(height)


def image_size(sizes: dict[str, tuple[int, int]] | None, image_id: str, where: str) -> tuple[int, int]:
    """The image's (width, height) from --image-sizes, or the nominal size without them."""
    if sizes is None:
        return NOMINAL_SIZE, NOMINAL_SIZE
    try:
        return sizes[image_id]
    except KeyError:
        raise TsvError(f"{where}: image {image_id!r} has no entry in --image-sizes; add it") from None
