"""Caption datasets: (image, caption) training examples with their targets, and images to caption.

Every random choice of a training example (which tokens are masked, and how) comes from an RNG
seeded by (seed, epoch, index), so an example is the same in every worker and after a resume.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from vlbert.data.collate import collate_inputs, length_mask, pad_stack
from vlbert.data.regions import box_locations
from vlbert.data.samplers import EXAMPLE_POSITION_KEY, key_position, put_batch_position
from vlbert.featstore import FeatureStore
from vlbert.modeling.caption import CAPTION_OBJECTIVES, IGNORE_INDEX
from vlbert.pretraining.masking import mask_tokens

from .data import CaptionSplit


def caption_targets(
    input_ids: np.ndarray,
    objective: str,
    rng: np.random.Generator,
    mask_token_id: int,
    vocab_size: int,
    cls_token_id: int,
    mask_prob: float = 0.15,
) -> tuple[np.ndarray, np.ndarray]:
    """(model input ids [T], labels [T]) of one caption `[CLS] w1 .. wn [SEP]` for the objective.

    "masked": BERT masking (80% [MASK], 10% a random token, 10% kept; at least one) of the tokens
    after [CLS], the final [SEP] included so that the model learns where a caption ends (Oscar);
    labels are the originals there. "next_token": the input unchanged, labels[t] = input_ids[t + 1]
    (the last position predicts nothing)."""
    ids = np.asarray(input_ids, dtype=np.int64)
    if objective == "masked":
        return mask_tokens(ids, rng, mask_token_id, vocab_size, {cls_token_id}, mask_prob)
    if objective == "next_token":
        labels = np.full_like(ids, IGNORE_INDEX)
        labels[:-1] = ids[1:]
        return ids.copy(), labels
    raise ValueError(f"objective must be one of {CAPTION_OBJECTIVES}, got {objective!r}")


def region_inputs(store: FeatureStore, feature_id: str, max_regions: int) -> dict:
    record = store[feature_id]
    return {
        "region_features": record.features[:max_regions],
        "region_locations": box_locations(record.boxes[:max_regions], record.image_w, record.image_h),
    }


class CaptionTrainDataset(Dataset):
    """Item key (index, task, epoch[, batch_in_epoch]) or an index: one (image, reference caption)
    pair, tokenized once, with the objective's inputs and labels."""

    def __init__(self, split: CaptionSplit, store: FeatureStore, tokenizer, objective: str, max_text_len: int = 40,
                 max_regions: int = 100, mask_prob: float = 0.15, seed: int = 0) -> None:
        if objective not in CAPTION_OBJECTIVES:
            raise ValueError(f"objective must be one of {CAPTION_OBJECTIVES}, got {objective!r}")
        split.check_references()
        self.pairs = [(row, caption) for row, refs in enumerate(split.references) for caption in refs]
        self.feature_ids = split.feature_ids
        self.store, self.objective, self.max_regions, self.mask_prob, self.seed = store, objective, max_regions, mask_prob, seed
        encoded = tokenizer([caption for _, caption in self.pairs], truncation=True, max_length=max_text_len)["input_ids"]
        self.input_ids = [np.asarray(ids, dtype=np.int64) for ids in encoded]
        self.mask_token_id, self.cls_token_id, self.vocab_size = tokenizer.mask_token_id, tokenizer.cls_token_id, len(tokenizer)

    def __len__(self) -> int:
        return len(self.pairs)

    def text_lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def __getitem__(self, key) -> dict:
        index, _, epoch = (key, "caption", 0) if isinstance(key, (int, np.integer)) else key[:3]
        rng = np.random.default_rng([self.seed, epoch, index])
        input_ids, labels = caption_targets(self.input_ids[index], self.objective, rng, self.mask_token_id,
                                            self.vocab_size, self.cls_token_id, self.mask_prob)
        item = {"input_ids": input_ids, "labels": labels,
                **region_inputs(self.store, self.feature_ids[self.pairs[index][0]], self.max_regions)}
        position = key_position(key)
        if position is not None:
            item[EXAMPLE_POSITION_KEY] = position
        return item


def collate_train(items: list[dict], pad_token_id: int = 0) -> dict:
    """Padded model inputs and labels [B, T] (IGNORE_INDEX at padding)."""
    batch = collate_inputs(items, pad_token_id, extra={"labels": ((len(items), max(len(i["labels"]) for i in items)), torch.long)})
    pad_stack([item["labels"] for item in items], IGNORE_INDEX, out=batch["labels"])
    put_batch_position(batch, items)
    return batch


class ImageRows:
    """A batch's images: their rows in the split, result ids and references. A plain object, so that
    moving the batch to its device leaves it as it is."""

    def __init__(self, rows: Sequence[int], result_ids: Sequence, references: Sequence[list[str]]) -> None:
        self.rows, self.result_ids, self.references = list(rows), list(result_ids), list(references)

    def __len__(self) -> int:
        return len(self.rows)


class CaptionImageDataset(Dataset):
    """Item i: image i of the split, its regions, result id and references: what is captioned."""

    def __init__(self, split: CaptionSplit, store: FeatureStore, max_regions: int = 100) -> None:
        self.split, self.store, self.max_regions = split, store, max_regions

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict:
        split = self.split
        return {"row": index, "result_id": split.result_ids[index], "references": split.references[index],
                **region_inputs(self.store, split.feature_ids[index], self.max_regions)}


def collate_images(items: list[dict]) -> dict:
    """region_features [B, R, D] (as stored), region_locations [B, R, 7], region_mask [B, R] and `images`."""
    features = [item["region_features"] for item in items]
    return {
        "region_features": pad_stack(features),
        "region_locations": pad_stack([item["region_locations"] for item in items], dtype=torch.float32),
        "region_mask": length_mask([len(f) for f in features]),
        "images": ImageRows([i["row"] for i in items], [i["result_id"] for i in items], [i["references"] for i in items]),
    }
