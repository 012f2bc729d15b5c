"""Which file and group hold each image of a feature store, for millions of image ids.

A dict of a million str ids to tuples costs ~300 MB in every DataLoader worker, and copy-on-write
does not save it: reference counts touch its pages. Here the ids are one fixed-width bytes array,
sorted once, searched with numpy; nothing is a Python object per id, so forked workers share the
pages. A file written by FeatureWriter carries its ids as one dataset (`/image_ids`), read at open
in one call instead of opening every image group (the old files are still read group by group).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

IDS_DATASET = "image_ids"  # in a file: the ids of its /images groups, fixed-width UTF-8 bytes


def encode_ids(ids: Iterable[str]) -> np.ndarray:
    """Image ids as a fixed-width bytes array (UTF-8), the form of `/image_ids` and of the index."""
    encoded = [str(i).encode("utf-8") for i in ids]
    return np.array(encoded, dtype=f"S{max(map(len, encoded), default=1) or 1}")


@dataclass
class ImageIndex:
    """Image id -> (file index, group key, row) over the files of a store, rows in file order.

    ids: [N] bytes, every file's ids one after another (row = position); files: [N] file index of
    each row; keys: the group key of rows whose key is not `image_key(id)` (files other programs
    wrote), usually empty."""

    ids: np.ndarray
    files: np.ndarray
    keys: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.order = np.argsort(self.ids, kind="stable")  # rows by id
        self.sorted_ids = self.ids[self.order]

    @classmethod
    def build(cls, per_file: Sequence[np.ndarray], keys: Sequence[dict[int, str]] = ()) -> "ImageIndex":
        """From each file's ids (bytes arrays) and its exceptional group keys (file row -> key)."""
        width = max((a.dtype.itemsize for a in per_file), default=1)
        ids = np.concatenate([a.astype(f"S{width}") for a in per_file]) if per_file else np.zeros(0, "S1")
        files = np.concatenate([np.full(len(a), i, np.int32) for i, a in enumerate(per_file)]) if per_file else np.zeros(0, np.int32)
        starts = np.cumsum([0, *map(len, per_file)])
        merged = {int(starts[i]) + row: key for i, file_keys in enumerate(keys) for row, key in file_keys.items()}
        return cls(ids, files, merged)

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, image_id: str) -> int | None:
        """The image's row, or None when the store does not hold it."""
        needle = image_id.encode("utf-8")
        if len(needle) > self.ids.dtype.itemsize or not len(self.ids):
            return None
        at = int(np.searchsorted(self.sorted_ids, np.array(needle, dtype=self.ids.dtype)))
        if at < len(self.sorted_ids) and self.sorted_ids[at] == needle:
            return int(self.order[at])
        return None

    def id_of(self, row: int) -> str:
        return self.ids[row].decode("utf-8")

    def duplicate(self) -> tuple[int, int] | None:
        """Two rows holding the same id (the first such pair in id order), or None."""
        same = np.flatnonzero(self.sorted_ids[1:] == self.sorted_ids[:-1])
        if not len(same):
            return None
        return int(self.order[same[0]]), int(self.order[same[0] + 1])

    def missing(self, needed: Iterable[str]) -> list[str]:
        """The ids of `needed` the store does not hold, sorted."""
        wanted = sorted({str(i) for i in needed})
        if not wanted:
            return []
        encoded = [w.encode("utf-8") for w in wanted]
        fits = np.array([len(e) <= self.ids.dtype.itemsize for e in encoded])
        found = np.zeros(len(wanted), bool)
        if fits.any() and len(self.ids):
            candidates = np.array([e for e, ok in zip(encoded, fits) if ok], dtype=self.ids.dtype)
            found[fits] = np.isin(candidates, self.sorted_ids)
        return [w for w, ok in zip(wanted, found) if not ok]

    def all_ids(self) -> list[str]:
        return [i.decode("utf-8") for i in self.ids]
