"""Object tags (Oscar): the detector's class names of an image's regions as a text segment.

The sequence becomes ``[CLS] text [SEP] tags [SEP] regions``: the tags are the names of the
regions' top classes, in region order (duplicates kept, so "circle circle" says two), with
token type 2 (text is 0, regions 1). Each class name is tokenized once, up front, so building an
example costs no tokenizer call.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from vlbert.errors import InputError

TAG_TOKEN_TYPE = 2
# class names that name no object: a region of this class gets no tag
BACKGROUND_NAMES = frozenset({"__background__", "background", "n/a", "none", ""})


class ObjectTags:
    """Tag token ids of a detector's classes, and the tag segment of an image's regions."""

    def __init__(self, class_names: Sequence[str] | None, tokenizer, max_tags: int = 20, source: str = "the feature store"):
        """max_tags: at most this many tag tokens (whole class names, the first regions' first) before
        the closing [SEP]."""
        if not class_names:
            raise InputError(
                f"data.object_tags needs the detector's class names, but {source} has none; extract with a "
                "backend that records them (torchvision's COCO model, detectron2 with class_names_file), import "
                "with --labelmap (VinVL) or --class-names (bottom-up TSV, UNITER LMDB), or set data.object_tags: false"
            )
        if max_tags < 1:
            raise InputError(f"data.max_tags must be >= 1, got {max_tags}")
        self.class_names = list(class_names)
        self.max_tags = max_tags
        self.sep_token_id = tokenizer.sep_token_id
        names = [name if name.strip().lower() not in BACKGROUND_NAMES else "" for name in self.class_names]
        encoded = tokenizer(names, add_special_tokens=False)["input_ids"]
        self.class_tokens = [np.asarray(ids, dtype=np.int64) for ids in encoded]

    @property
    def max_length(self) -> int:
        """Tokens the segment adds to the text at most (its tags and [SEP])."""
        return self.max_tags + 1

    def _taken(self, labels: np.ndarray | None) -> list[int]:
        """The labels whose tags fit in max_tags tokens, in region order, background left out."""
        taken, length = [], 0
        for label in (labels if labels is not None else ()):
            label = int(label)
            size = len(self.class_tokens[label]) if 0 <= label < len(self.class_tokens) else 0
            if not size:
                continue
            if length + size > self.max_tags:
                break
            taken.append(label)
            length += size
        return taken

    def segment(self, labels: np.ndarray | None) -> np.ndarray:
        """The tag tokens of regions with top classes `labels` [R], closed by [SEP]; empty when no
        region has a tag (the sequence is then the text alone)."""
        taken = self._taken(labels)
        if not taken:
            return np.zeros(0, np.int64)
        return np.concatenate([*(self.class_tokens[label] for label in taken), [self.sep_token_id]]).astype(np.int64)

    def append_to(self, input_ids: np.ndarray, labels: np.ndarray | None, max_regions: int) -> tuple[np.ndarray, np.ndarray]:
        """`with_tags` of the text and the tags of the first `max_regions` regions (those the model sees)."""
        return with_tags(input_ids, self.segment(None if labels is None else np.asarray(labels)[:max_regions]))

    def words(self, labels: np.ndarray | None) -> list[str]:
        """The class names `segment` puts in the tags of `labels` (for display)."""
        return [self.class_names[label] for label in self._taken(labels)]


def with_tags(input_ids: np.ndarray, tags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(text ids followed by the tag segment, token types: 0 for the text, TAG_TOKEN_TYPE for the tags)."""
    ids = np.concatenate([input_ids, tags]).astype(np.int64)
    types = np.zeros(len(ids), np.int64)
    types[len(input_ids):] = TAG_TOKEN_TYPE
    return ids, types
