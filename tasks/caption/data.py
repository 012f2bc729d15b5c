"""Captioning annotations -> one `CaptionSplit`: the images of a split with their reference captions.

Three formats, told apart by content:

Karpathy-split JSON (``dataset_coco.json``; the synthetic world's ``retrieval/dataset_synth.json``)::

    {"images": [{"filename": "COCO_val2014_000000391895.jpg", "split": "train" | "val" | "test" | "restval",
                 "cocoid": 391895, "imgid": 0, "sentences": [{"raw": "A man ...", "tokens": [...]}, ...]}, ...]}

COCO captions JSON (``captions_val2014.json``; the world's ``captions/captions_{split}.json``)::

    {"images": [{"id": 391895, "file_name": "COCO_val2014_000000391895.jpg"}, ...],
     "annotations": [{"image_id": 391895, "caption": "A man ..."}, ...]}

JSONL caption lines (the world's ``captions/{split}.jsonl``), an optional "split" filtered on::

    {"image_id": 1000, "caption": "a red circle ..."}

Each image has two ids: the *feature id* it is stored under in the feature store (from the file
name by ``image_id_from``, as retrieval does) and the *result id* written as "image_id" in the
COCO results JSON and matched against COCO-format references: the COCO id (Karpathy ``cocoid``,
COCO ``id``; else Karpathy ``imgid``; for JSONL the line's ``image_id``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

from vlbert.errors import InputError
from vlbert.featstore import FeatureStore

IMAGE_ID_SOURCES = ("stem", "filename", "imgid", "cocoid", "id")


class CaptionDataError(InputError):
    """Caption annotations that cannot serve the request (unknown split, bad entry, missing file)."""


@dataclass
class CaptionSplit:
    """Images of one split: feature ids, result ids and reference captions (possibly none, for
    `predict` on images without references), in file order."""

    feature_ids: list[str]
    result_ids: list[int | str]
    references: list[list[str]]
    source: str

    def __post_init__(self) -> None:
        for name, ids in (("feature", self.feature_ids), ("result", self.result_ids)):
            seen: set = set()
            repeated = sorted({str(i) for i in ids if i in seen or seen.add(i)})
            if repeated:
                raise CaptionDataError(f"{self.source}: {name} ids occur twice: {repeated[:10]}; choose another data.image_id_from")

    def __len__(self) -> int:
        return len(self.feature_ids)

    def first(self, n: int | None) -> "CaptionSplit":
        """The first `n` images (a cheaper validation split)."""
        if n is None or n >= len(self):
            return self
        return CaptionSplit(self.feature_ids[:n], self.result_ids[:n], self.references[:n], f"{self.source} (first {n} images)")

    def reference_map(self) -> dict[int | str, list[str]]:
        """{result id: its reference captions}, what the metrics score against."""
        return dict(zip(self.result_ids, self.references))

    def check_references(self) -> None:
        empty = [self.feature_ids[i] for i, refs in enumerate(self.references) if not refs]
        if empty:
            raise CaptionDataError(f"{self.source}: images without reference captions: {empty[:10]}; "
                                   "scoring needs references (predict does not)")

    def check_features(self, store: FeatureStore) -> None:
        """Fail before any work when images of this split have no features."""
        store.check_ids(self.feature_ids, what=self.source)


def _feature_id(entry: dict, image_id_from: str, name_key: str, where: str) -> str:
    if image_id_from in ("stem", "filename"):
        if name_key not in entry:
            raise CaptionDataError(f"{where}: image entry has no {name_key!r}; set data.image_id_from to an id field")
        name = PurePosixPath(str(entry[name_key]).replace("\\", "/"))
        return name.stem if image_id_from == "stem" else name.name
    if image_id_from not in entry:
        raise CaptionDataError(f"{where}: image entry has no {image_id_from!r} field; set data.image_id_from: stem")
    return str(entry[image_id_from])


def _sentences(entry: dict, where: str) -> list[str]:
    texts = []
    for sentence in entry.get("sentences", []):
        text = sentence.get("raw") if isinstance(sentence, dict) else sentence
        if not isinstance(text, str) or not text.strip():
            raise CaptionDataError(f"{where}: a sentence has no 'raw' text")
        texts.append(text.strip())
    return texts


def load_karpathy(data: dict, path: Path, splits: Sequence[str], image_id_from: str) -> CaptionSplit:
    wanted, present = set(splits), set()
    feature_ids, result_ids, references = [], [], []
    for n, entry in enumerate(data["images"]):
        present.add(str(entry.get("split")))
        if entry.get("split") not in wanted:
            continue
        where = f"{path} image #{n}"
        feature_ids.append(_feature_id(entry, image_id_from, "filename", where))
        result_ids.append(entry["cocoid"] if "cocoid" in entry else entry.get("imgid", feature_ids[-1]))
        references.append(_sentences(entry, where))
    if not feature_ids:
        raise CaptionDataError(f"{path} has no images in split(s) {sorted(wanted)}; the file has splits {sorted(present)}")
    return CaptionSplit(feature_ids, result_ids, references, f"{path} [{'+'.join(splits)}]")


def load_coco(data: dict, path: Path, image_id_from: str) -> CaptionSplit:
    source = image_id_from if image_id_from != "cocoid" else "id"
    rows: dict = {}
    for n, image in enumerate(data["images"]):
        if "id" not in image:
            raise CaptionDataError(f"{path} image #{n} has no 'id'")
        rows[image["id"]] = (_feature_id(image, source, "file_name", f"{path} image #{n}"), [])
    for n, annotation in enumerate(data["annotations"]):
        if annotation.get("image_id") not in rows:
            raise CaptionDataError(f"{path} annotation #{n}: image_id {annotation.get('image_id')!r} is not among the file's images")
        caption = annotation.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise CaptionDataError(f"{path} annotation #{n} has no 'caption' text")
        rows[annotation["image_id"]][1].append(caption.strip())
    if not rows:
        raise CaptionDataError(f"{path} has no images")
    return CaptionSplit([f for f, _ in rows.values()], list(rows), [refs for _, refs in rows.values()], str(path))


def load_jsonl(path: Path, splits: Sequence[str] | None) -> CaptionSplit:
    groups: dict = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise CaptionDataError(f"{path}:{n}: not JSON ({error})") from None
            if splits and "split" in row and row["split"] not in splits:
                continue
            if "image_id" not in row or not isinstance(row.get("caption"), str):
                raise CaptionDataError(f"{path}:{n}: needs 'image_id' and a 'caption' string")
            groups.setdefault(row["image_id"], []).append(row["caption"].strip())
    if not groups:
        raise CaptionDataError(f"{path} has no caption lines" + (f" in split(s) {list(splits)}" if splits else ""))
    return CaptionSplit([str(i) for i in groups], list(groups), list(groups.values()), str(path))


def load_captions(path: str | os.PathLike, splits: Sequence[str] | str | None = None, image_id_from: str = "stem") -> CaptionSplit:
    """The images of `splits` (Karpathy JSON; JSONL lines with a "split"), or of the whole file
    (COCO captions JSON, JSONL), with their references."""
    if image_id_from not in IMAGE_ID_SOURCES:
        raise CaptionDataError(f"data.image_id_from must be one of {IMAGE_ID_SOURCES}, got {image_id_from!r}")
    splits = [splits] if isinstance(splits, str) else list(splits or [])
    path = Path(path)
    if not path.is_file():
        raise CaptionDataError(f"caption annotations {path} do not exist")
    if path.suffix == ".jsonl":
        return load_jsonl(path, splits)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CaptionDataError(f"{path} is not valid JSON: {error}") from None
    if isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("annotations"), list):
        return load_coco(data, path, image_id_from)
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        if not splits:
            raise CaptionDataError(f"{path}: a Karpathy-split file needs the split(s) to read, e.g. ['test']")
        return load_karpathy(data, path, splits, image_id_from)
    raise CaptionDataError(f"{path} is neither a Karpathy-split file ({{'images': [...]}}) nor COCO captions "
                           "({'images': [...], 'annotations': [...]})")
