"""Image-caption pairs from JSONL ({"image_id", "caption"} per line) or COCO captions JSON."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CaptionPair:
    image_id: str  # the feature-store id
    caption: str


def load_pairs(path: str | os.PathLike, image_id_format: str = "{image_id}") -> list[CaptionPair]:
    """Read caption pairs; `image_id_format` maps an annotation's image id to the feature-store id
    (e.g. "COCO_train2014_{image_id:012d}" for features extracted from COCO file names)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    pairs: list[CaptionPair] = []
    if path.suffix == ".jsonl":
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pairs.append(CaptionPair(_format_id(image_id_format, row["image_id"]), str(row["caption"])))
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{line_no}: expected a JSON object with image_id and caption ({error})") from None
    else:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or "annotations" not in data:
            raise ValueError(f"{path}: expected COCO captions JSON with an 'annotations' list, or a .jsonl file")
        for row in data["annotations"]:
            pairs.append(CaptionPair(_format_id(image_id_format, row["image_id"]), str(row["caption"])))
    if not pairs:
        raise ValueError(f"{path} holds no caption pairs")
    return pairs


def _format_id(template: str, image_id) -> str:
    try:
        return template.format(image_id=image_id)
    except (ValueError, KeyError) as error:
        raise ValueError(f"image_id_format {template!r} cannot format image id {image_id!r}: {error}") from None
