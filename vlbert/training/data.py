"""TrainingDataModule: what every job's LightningDataModule shares.

- `store`, `tokenizer`, `tags` (set by the job's `setup`) and `feature_header`: what the training
  base checks the model against and records in checkpoints and model directories;
- exact resume: training batches carry their position in their epoch (TaskBatchSampler's keys,
  put in the batch by collate); the last one training consumed is the resume state saved in
  checkpoints, so a resumed run skips exactly the batches the first one saw.
"""
from __future__ import annotations

from typing import Callable, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from vlbert.data.samplers import EpochSampler, TaskBatchSampler, consumed_state, take_batch_position
from vlbert.data.tags import ObjectTags
from vlbert.data.tokenizer import load_tokenizer
from vlbert.featstore import FeatureStore


class TrainingDataModule(L.LightningDataModule):
    store = None
    tokenizer = None
    tags: ObjectTags | None = None  # the object tags of hparams `object_tags` / `max_tags`, where a job has them
    _consumed: dict | None = None
    _resume: dict | None = None

    def open_inputs(self) -> None:
        """The tokenizer and the feature store of hparams `tokenizer` / `features`, once (`setup` runs
        before the trainer starts and again in Lightning's setup)."""
        if self.store is None:
            self.tokenizer = load_tokenizer(self.hparams.tokenizer)
            self.store = FeatureStore(self.hparams.features)
            if self.hparams.get("object_tags"):
                self.tags = ObjectTags(self.store.class_names, self.tokenizer, self.hparams.max_tags,
                                       source=f"the feature store data.features={self.hparams.features}")

    @property
    def max_text_tokens(self) -> int:
        """The longest text the model is given: max_text_len, and the tag segment where tags are on."""
        return self.hparams.max_text_len + (self.tags.max_length if self.tags is not None else 0)

    @property
    def feature_header(self) -> dict:
        """The feature file's header, as features.json holds it."""
        return {"feature_dim": self.store.feature_dim, "num_classes": self.store.num_classes, "provenance": self.store.provenance}

    def task_loader(
        self,
        dataset: Dataset,
        collate_fn: Callable,
        train: bool,
        batch_size: int,
        tasks: Sequence[str],
        weights: Sequence[float] | None = None,
        lengths: Sequence[int] | None = None,
        max_tokens: int | None = None,
    ) -> DataLoader:
        """Batches of (index, task, epoch[, position]) keys from TaskBatchSampler (hparams `seed` and
        `num_workers`): for training shuffled per epoch and starting where a resumed run left off;
        otherwise every task's batches of epoch 0's examples, the same at every evaluation.
        max_tokens: batches of up to this many tokens (`lengths` per example) instead of
        `batch_size` examples."""
        seed, workers = self.hparams.seed, self.hparams.num_workers
        resume: dict = {}
        if train:  # a resumed run's position, once: a later training loader starts afresh
            resume, self._resume = self._resume or {}, None
        batch_sampler = TaskBatchSampler(
            EpochSampler(len(dataset), shuffle=train, seed=seed), batch_size=batch_size, drop_last=False,
            tasks=tasks, weights=weights, every_task=not train, lengths=lengths, seed=seed,
            resume_epoch=resume.get("epoch", -1), resume_batches=resume.get("batches", 0), max_tokens=max_tokens,
        )
        return DataLoader(
            dataset, batch_sampler=batch_sampler, num_workers=workers, collate_fn=collate_fn,
            persistent_workers=workers > 0,
            # Its own generator: creating the iterator (again, on resume) must not draw from the
            # global RNG that dropout uses.
            generator=torch.Generator().manual_seed(seed),
        )

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Lightning calls this in the main process for each batch it is about to use, after the
        DataLoader's workers (which read ahead). Only training batches carry a position: it is
        taken off here (it is no model input) and kept as the last batch training consumed."""
        position = take_batch_position(batch)
        if position is not None:
            self._consumed = consumed_state(position)
        return batch

    def state_dict(self) -> dict:
        """{"epoch": e, "batches": batches of epoch e consumed}, of the last training batch
        consumed (or of the checkpoint this run resumed from); {} before any."""
        return dict(self._consumed or {})

    def load_state_dict(self, state: dict) -> None:
        self._resume = state or None
        self._consumed = dict(state) if state else None
