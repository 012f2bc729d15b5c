"""Retrieval annotations: Karpathy-split JSON and JSONL pairs -> one `RetrievalSplit`.

Karpathy JSON (``dataset_flickr30k.json``, ``dataset_coco.json``, and the synthetic
world's ``dataset_synth.json``)::

    {"images": [{"filename": "1000092795.jpg", "split": "train" | "val" | "test" | "restval",
                 "sentences": [{"raw": "Two young guys ...", ...}, ...],
                 "imgid": 0, "cocoid": 391895 (COCO only), ...}, ...]}

JSONL, one object per line, one caption or several::

    {"image": "1000092795.jpg", "caption": "Two young guys ..."}
    {"image_id": "1000092795", "captions": ["...", "..."], "split": "test"}

``image_id`` is used as the feature-store id as it is; ``image`` (a file name) is mapped
to an id the same way as Karpathy file names (``image_id_from``). An optional ``split``
field is filtered on like the Karpathy one. Lines of the same image are merged.

Feature-store ids from file names (``image_id_from``):
  "stem"      file name without directory and extension ("1000092795.jpg" -> "1000092795");
              what `vlbert extract` writes for an image directory, and the synthetic world
  "filename"  the file name as written
  "imgid" / "cocoid"   that field of the Karpathy image entry (COCO features are often
              keyed by the integer COCO id)
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

from vlbert.data.text_files import read_json, read_text
from vlbert.errors import InputError, InputNotFound
from vlbert.featstore import FeatureStore

IMAGE_ID_SOURCES = ("stem", "filename", "imgid", "cocoid")


@dataclass
class RetrievalSplit:
    """Images and captions of one split. Caption c belongs to image row ``caption_image[c]``."""

    image_ids: list[str]
    captions: list[str]
    caption_image: list[int]
    source: str = "annotations"
    image_captions: list[list[int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.caption_image):
            raise InputError(f"{self.source}: {len(self.captions)} captions but {len(self.caption_image)} image links")
        if len(set(self.image_ids)) != len(self.image_ids):
            seen: set[str] = set()
            dup = [i for i in self.image_ids if i in seen or seen.add(i)]
            raise InputError(f"{self.source}: image ids occur twice: {sorted(set(dup))[:10]}")
        self.image_captions = [[] for _ in self.image_ids]
        for c, row in enumerate(self.caption_image):
            if not 0 <= row < len(self.image_ids):
                raise InputError(f"{self.source}: caption {c} points to image row {row} of {len(self.image_ids)}")
            self.image_captions[row].append(c)
        empty = [self.image_ids[i] for i, caps in enumerate(self.image_captions) if not caps]
        if empty:
            raise InputError(f"{self.source}: images without captions: {empty[:10]}")

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    def first_images(self, n: int | None) -> "RetrievalSplit":
        """The first ``n`` images and their captions (a cheaper validation split)."""
        if n is None or n >= self.num_images:
            return self
        keep = [c for c, row in enumerate(self.caption_image) if row < n]
        return RetrievalSplit(
            self.image_ids[:n],
            [self.captions[c] for c in keep],
            [self.caption_image[c] for c in keep],
            source=f"{self.source} (first {n} images)",
        )

    def check_features(self, store: FeatureStore) -> None:
        """Fail before any training when images of this split have no features."""
        store.check_ids(self.image_ids, what=self.source)


def image_id_from_filename(filename: str, image_id_from: str = "stem") -> str:
    name = PurePosixPath(str(filename).replace("\\", "/"))
    if image_id_from == "stem":
        return name.stem
    if image_id_from == "filename":
        return name.name
    raise InputError(f"image_id_from={image_id_from!r} cannot map a file name; use 'stem' or 'filename'")


def _karpathy_image_id(entry: dict, image_id_from: str, where: str) -> str:
    if image_id_from not in IMAGE_ID_SOURCES:
        raise InputError(f"image_id_from must be one of {IMAGE_ID_SOURCES}, got {image_id_from!r}")
    if image_id_from in ("stem", "filename"):
        if "filename" not in entry:
            raise InputError(f"{where}: image entry has no 'filename'")
        return image_id_from_filename(entry["filename"], image_id_from)
    if image_id_from not in entry:
        raise InputError(f"{where}: image entry has no {image_id_from!r} field; set image_id_from: stem")
    return str(entry[image_id_from])


def _assemble(groups: dict[str, list[str]], source: str) -> RetrievalSplit:
    image_ids, captions, caption_image = [], [], []
    for row, (image_id, texts) in enumerate(groups.items()):
        image_ids.append(image_id)
        captions.extend(texts)
        caption_image.extend([row] * len(texts))
    return RetrievalSplit(image_ids, captions, caption_image, source=source)


def load_karpathy(
    path: str | os.PathLike, splits: Sequence[str], image_id_from: str = "stem"
) -> RetrievalSplit:
    """Images of the given Karpathy splits (e.g. ["train", "restval"]) in file order."""
    path = Path(path)
    data = read_json(path, "retrieval annotations")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"{path} is not a Karpathy-split file: expected {{'images': [...]}} at the top")
    wanted = set(splits)
    groups: dict[str, list[str]] = {}
    present: set[str] = set()
    for n, entry in enumerate(data["images"]):
        where = f"{path} image #{n}"
        split = entry.get("split")
        present.add(str(split))
        if split not in wanted:
            continue
        image_id = _karpathy_image_id(entry, image_id_from, where)
        if image_id in groups:
            raise InputError(f"{where}: image id {image_id!r} occurs twice; choose another image_id_from")
        texts = []
        for sentence in entry.get("sentences", []):
            text = sentence.get("raw") if isinstance(sentence, dict) else sentence
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"{where}: a sentence has no 'raw' text")
            texts.append(text.strip())
        if not texts:
            raise InputError(f"{where}: image {image_id!r} has no sentences")
        groups[image_id] = texts
    if not groups:
        raise InputError(f"{path} has no images in split(s) {sorted(wanted)}; the file has splits {sorted(present)}")
    return _assemble(groups, f"{path} [{'+'.join(splits)}]")


def load_jsonl(
    path: str | os.PathLike, splits: Sequence[str] | None = None, image_id_from: str = "stem"
) -> RetrievalSplit:
    """Caption lines (see the module docstring), merged per image in order of first appearance."""
    path = Path(path)
    groups: dict[str, list[str]] = {}
    for n, line in enumerate(read_text(path, "retrieval annotations").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not JSON ({e})") from None
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object with image_id and caption(s)")
        if splits is not None and "split" in row and row["split"] not in splits:
            continue
        if "image_id" in row:
            image_id = str(row["image_id"])
        elif "image" in row:
            image_id = image_id_from_filename(row["image"], image_id_from)
        else:
            raise InputError(f"{where}: needs 'image_id' (feature-store id) or 'image' (file name)")
        texts = row.get("captions", [row["caption"]] if "caption" in row else None)
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise InputError(f"{where}: needs a non-empty 'caption' string or 'captions' list")
        groups.setdefault(image_id, []).extend(t.strip() for t in texts)
    if not groups:
        raise InputError(f"{path} has no caption lines" + (f" in split(s) {list(splits)}" if splits else ""))
    return _assemble(groups, f"{path}" + (f" [{'+'.join(splits)}]" if splits else ""))


def load_split(
    path: str | os.PathLike, splits: Sequence[str] | str | None, image_id_from: str = "stem"
) -> RetrievalSplit:
    """Dispatch on the file type: ``.jsonl`` -> `load_jsonl`, else a Karpathy JSON file."""
    if isinstance(splits, str):
        splits = [splits]
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"retrieval annotations {path} do not exist")
    if path.suffix == ".jsonl":
        return load_jsonl(path, splits, image_id_from)
    if not splits:
        raise InputError(f"{path}: a Karpathy-split file needs the split(s) to read, e.g. ['test']")
    return load_karpathy(path, splits, image_id_from)
