"""Torch datasets for retrieval: training examples with sampled negatives, and blocks of
images for all-pairs evaluation.

Captions are tokenized once when a dataset is built. A training batch loads each distinct
image and caption once, however many pairs of the batch use it; the pairs themselves are
index tensors into the batch's texts and images (see `collate`).
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from vlbert.data.collate import length_mask, pad_stack
from vlbert.data.regions import box_locations
from vlbert.data.samplers import EXAMPLE_POSITION_KEY, key_position, put_batch_position
from vlbert.featstore import FeatureStore

from .data import RetrievalSplit
from .negatives import sample_negatives
from .scoring import shard_range


def tokenize_captions(tokenizer, captions: Sequence[str], max_text_len: int) -> list[np.ndarray]:
    """[CLS] caption [SEP] token ids, truncated to ``max_text_len``, one array per caption."""
    encoded = tokenizer(list(captions), truncation=True, max_length=max_text_len)["input_ids"]
    return [np.asarray(ids, dtype=np.int64) for ids in encoded]


def load_regions(store: FeatureStore, image_id: str, max_regions: int) -> tuple[np.ndarray, np.ndarray]:
    """(features [R, D], locations [R, 7]) of the image's first ``max_regions`` regions."""
    record = store[image_id]
    features = record.features[:max_regions].astype(np.float32, copy=False)
    locations = box_locations(record.boxes[:max_regions], record.image_w, record.image_h)
    return features, locations


class RetrievalTrainDataset(Dataset):
    """One example per caption: the caption, its image, ``negative_images`` other images
    and ``negative_captions`` captions of other images, drawn by an RNG seeded with
    (seed, epoch, index) so an example does not depend on the worker or on resuming.

    Keys are caption indices (epoch 0), (index, task, epoch), or training keys (index, task,
    epoch, batch_in_epoch) from `TaskBatchSampler`, whose position only travels to the batch
    (see `collate`).
    """

    def __init__(
        self,
        split: RetrievalSplit,
        store: FeatureStore,
        tokenizer,
        negative_images: int = 7,
        negative_captions: int = 7,
        max_text_len: int = 40,
        max_regions: int = 100,
        seed: int = 0,
    ) -> None:
        most_owned = max(len(c) for c in split.image_captions)
        if negative_images > split.num_images - 1:
            raise ValueError(
                f"negative_images={negative_images} but {split.source} has only {split.num_images} images; "
                f"use at most {split.num_images - 1}"
            )
        if negative_captions > split.num_captions - most_owned:
            raise ValueError(
                f"negative_captions={negative_captions} but {split.source} has only {split.num_captions} captions "
                f"({most_owned} of one image); use at most {split.num_captions - most_owned}"
            )
        self.split = split
        self.store = store
        self.negative_images = negative_images
        self.negative_captions = negative_captions
        self.max_regions = max_regions
        self.seed = seed
        self.input_ids = tokenize_captions(tokenizer, split.captions, max_text_len)
        self.pad_token_id = tokenizer.pad_token_id

    def __len__(self) -> int:
        return self.split.num_captions

    def text_lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def __getitem__(self, key: int | tuple) -> dict:
        if isinstance(key, (int, np.integer)):
            index, epoch = key, 0
        else:  # (index, task, epoch[, batch_in_epoch]); (index, epoch) too
            index, epoch = key[0], key[2] if len(key) >= 3 else key[-1]
        rng = np.random.default_rng([self.seed, epoch, index])
        image = self.split.caption_image[index]
        example = {
            "caption": index,
            "image": image,
            "negative_images": sample_negatives(self.split.num_images, [image], self.negative_images, rng),
            "negative_captions": sample_negatives(
                self.split.num_captions, self.split.image_captions[image], self.negative_captions, rng
            ),
        }
        position = key_position(key)
        if position is not None:
            example[EXAMPLE_POSITION_KEY] = position
        return example

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Texts and images of the batch, each loaded once, and the pairs as indices into them.

        input_ids / text_mask [Nt, T]; region_features [Ni, R, D], region_locations [Ni, R, 7],
        region_mask [Ni, R]; positive_text / positive_image [B]; negative_images [B, n_img]
        (rows of the batch's images, each with the positive's text); negative_texts [B, n_cap]
        (rows of the batch's texts, each with the positive's image).

        Training batches (examples built from TaskBatchSampler's 4-tuple keys) also hold where
        they stand, as plain ints: "epoch" (the epoch their keys were drawn for) and
        "batch_in_epoch" (their index in it). They are for exact resume, not model inputs: the
        datamodule removes them in `on_before_batch_transfer`.
        """
        captions: dict[int, int] = {}
        images: dict[int, int] = {}

        def slot(table: dict[int, int], key: int) -> int:
            return table.setdefault(int(key), len(table))

        positive_text = [slot(captions, e["caption"]) for e in examples]
        positive_image = [slot(images, e["image"]) for e in examples]
        negative_images = [[slot(images, i) for i in e["negative_images"]] for e in examples]
        negative_texts = [[slot(captions, c) for c in e["negative_captions"]] for e in examples]
        regions = [load_regions(self.store, self.split.image_ids[i], self.max_regions) for i in images]
        texts = [self.input_ids[c] for c in captions]
        batch = {
            "input_ids": pad_stack(texts, self.pad_token_id, torch.long),
            "text_mask": length_mask([len(t) for t in texts]),
            "region_features": pad_stack([f for f, _ in regions], 0, torch.float32),
            "region_locations": pad_stack([loc for _, loc in regions], 0, torch.float32),
            "region_mask": length_mask([len(f) for f, _ in regions]),
            "positive_text": torch.tensor(positive_text, dtype=torch.long),
            "positive_image": torch.tensor(positive_image, dtype=torch.long),
            "negative_images": torch.tensor(negative_images, dtype=torch.long).view(len(examples), self.negative_images),
            "negative_texts": torch.tensor(negative_texts, dtype=torch.long).view(len(examples), self.negative_captions),
        }
        put_batch_position(batch, examples)
        return batch


class ImageBlocks(IterableDataset):
    """This rank's image rows (`shard_range`) in blocks of ``images_per_block``, with regions
    padded per block: dicts of region_features [b, R, D], region_locations [b, R, 7],
    region_mask [b, R] and rows [b] (row indices in the split). DataLoader workers take
    every ``num_workers``-th block, so each row is loaded exactly once per evaluation."""

    def __init__(
        self,
        split: RetrievalSplit,
        store: FeatureStore,
        images_per_block: int = 16,
        max_regions: int = 100,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.split = split
        self.store = store
        self.images_per_block = images_per_block
        self.max_regions = max_regions
        self.rows = shard_range(split.num_images, rank, world_size)

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.images_per_block)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for block in range(worker, len(self), workers):
            rows = self.rows[block * self.images_per_block : (block + 1) * self.images_per_block]
            regions = [load_regions(self.store, self.split.image_ids[r], self.max_regions) for r in rows]
            yield {
                "region_features": pad_stack([f for f, _ in regions], 0, torch.float32),
                "region_locations": pad_stack([loc for _, loc in regions], 0, torch.float32),
                "region_mask": length_mask([len(f) for f, _ in regions]),
                "rows": torch.tensor(list(rows), dtype=torch.long),
            }
