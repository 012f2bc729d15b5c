"""Image-caption pairs from JSONL ({"image_id", "caption"} per line) or COCO captions JSON."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from vlbert.data.text_files import read_text
from vlbert.errors import InputError


@dataclass(frozen=True)
class CaptionPair:
    image_id: str  # the feature-store id
    caption: str


def load_pairs(path: str | os.PathLike, image_id_format: str = "{image_id}") -> list[CaptionPair]:
    """Read caption pairs; `image_id_format` maps an annotation's image id to the feature-store id
    (e.g. "COCO_train2014_{image_id:012d}" for features extracted from COCO file names)."""
    path = Path(path)
    text = read_text(path, "annotation file")
    pairs: list[CaptionPair] = []
    if path.suffix == ".jsonl":
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pairs.append(CaptionPair(_format_id(image_id_format, row["image_id"]), str(row["caption"])))
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise InputError(f"{path}, line {line_no}: expected a JSON object with image_id and caption ({error})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"annotation file {path} is not valid JSON (line {error.lineno}: {error.msg}); "
                             "expected COCO captions JSON or a .jsonl file") from None
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
            raise InputError(f"{path}: expected COCO captions JSON with an 'annotations' list, or a .jsonl file")
        for n, row in enumerate(data["annotations"]):
            try:
                pairs.append(CaptionPair(_format_id(image_id_format, row["image_id"]), str(row["caption"])))
            except (KeyError, TypeError):
                raise InputError(f"{path}: annotation #{n} needs image_id and caption") from None
    if not pairs:
        raise InputError(f"annotation file {path} holds no caption pairs; give a file with at least one caption")
    return pairs


def _format_id(template: str, image_id) -> str:
    try:
        return template.format(image_id=image_id)
    except (ValueError, KeyError) as error:
        raise InputError(f"image_id_format {template!r} cannot format image id {image_id!r}: {error}") from None
