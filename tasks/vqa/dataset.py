"""The VQA dataset: examples + region features -> model inputs and soft-score targets."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from vlbert.data.collate import collate_inputs
from vlbert.data.regions import box_locations
from vlbert.data.tags import ObjectTags
from vlbert.featstore import FeatureStore
from vlbert.tasks.vqa.data import VQAExample


class VQADataset(Dataset):
    """Item i: the tokenized question, the image's first ``max_regions`` regions and, when
    ``targets`` are given, the soft target (vocab index -> score) of example i."""

    def __init__(
        self,
        examples: Sequence[VQAExample],
        store: FeatureStore,
        tokenizer,
        targets: Sequence[dict[int, float]] | None = None,
        max_text_len: int = 40,
        max_regions: int = 100,
        tags: ObjectTags | None = None,
    ) -> None:
        """tags: append each image's object tags to the question (a model pretrained with them)."""
        if targets is not None and len(targets) != len(examples):
            raise ValueError(f"{len(targets)} targets for {len(examples)} examples")
        self.examples = list(examples)
        self.targets = list(targets) if targets is not None else None
        self.store = store
        self.max_regions = max_regions
        self.tags = tags
        encoded = tokenizer([e.question for e in self.examples], truncation=True, max_length=max_text_len)["input_ids"]
        self.input_ids = [np.asarray(ids, dtype=np.int64) for ids in encoded]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        record = self.store[self.examples[index].feature_id]
        input_ids = self.input_ids[index]
        item = {}
        if self.tags is not None:
            input_ids, item["token_type_ids"] = self.tags.append_to(input_ids, record.top_labels(), self.max_regions)
        item |= {
            "index": index,
            "example": self.examples[index],
            "input_ids": input_ids,
            "region_features": record.features[: self.max_regions].astype(np.float32),
            "region_locations": box_locations(record.boxes[: self.max_regions], record.image_w, record.image_h),
        }
        if self.targets is not None:
            item["target"] = self.targets[index]
        return item


class BatchExamples:
    """A batch's VQAExamples. A plain object, not a list: moving a batch to its device (Lightning's
    apply_to_collection) would try to rebuild the frozen dataclasses inside a list."""

    def __init__(self, examples) -> None:
        self.items = list(examples)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def __getitem__(self, index: int) -> VQAExample:
        return self.items[index]


def collate_vqa(items: list[dict], pad_token_id: int = 0, num_answers: int | None = None) -> dict:
    """Padded model inputs, ``index`` [B] (positions in the dataset), ``examples`` (the B
    VQAExamples: question ids and human answers, what evaluation and predict report on) and, when
    the items carry targets, dense ``targets`` [B, num_answers]."""
    batch = collate_inputs(items, pad_token_id)
    batch["index"] = torch.tensor([item["index"] for item in items], dtype=torch.long)
    batch["examples"] = BatchExamples(item["example"] for item in items)
    if num_answers is not None and all("target" in item for item in items):
        targets = torch.zeros(len(items), num_answers)
        for row, item in enumerate(items):
            for answer, score in item["target"].items():
                targets[row, answer] = score
        batch["targets"] = targets
    return batch
