"""Samplers: an epoch-seeded shuffle, and a batch sampler that gives each batch a task,
groups examples of similar length, and can skip the batches a resumed run already saw."""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, Sampler


class EpochSampler(Sampler[int]):
    """A permutation of range(n) that depends only on (seed, epoch), so a resumed run sees
    the same order. Under DDP, Lightning swaps it for a DistributedSampler (also epoch-seeded)."""

    def __init__(self, num_examples: int, shuffle: bool = True, seed: int = 0) -> None:
        self.num_examples = num_examples
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_examples))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_examples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_examples


class TaskBatchSampler(BatchSampler):
    """Yields batches of (example index, task, epoch) keys.

    tasks/weights: one task drawn per batch with probability proportional to its weight
      (a single task, e.g. "mix", gives every batch that task);
    every_task: instead yield each batch once per task, always with epoch 0's keys (validation:
      every metric on the same examples each time);
    lengths: when given, indices are grouped `bucket_batches` batches at a time and sorted by
      length inside the group, so padding stays small; batch order is then shuffled;
    resume_epoch/resume_batches: skip the batches of that epoch a checkpointed run already consumed.
    """

    def __init__(
        self,
        sampler: Sampler[int],
        batch_size: int,
        drop_last: bool,
        tasks: Sequence[str] = ("mix",),
        weights: Sequence[float] | None = None,
        every_task: bool = False,
        lengths: Sequence[int] | None = None,
        bucket_batches: int = 50,
        seed: int = 0,
        resume_epoch: int = -1,
        resume_batches: int = 0,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.tasks = list(tasks)
        probs = np.asarray(weights if weights is not None else [1.0] * len(self.tasks), dtype=np.float64)
        self.probs = probs / probs.sum()
        self.every_task = every_task
        self.lengths = lengths
        self.bucket_batches = bucket_batches
        self.seed = seed
        self.resume_epoch = resume_epoch
        self.resume_batches = resume_batches

    @property
    def epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def _index_batches(self, rng: np.random.Generator) -> list[list[int]]:
        indices = list(self.sampler)
        if self.lengths is None:
            groups = [indices]
        else:
            size = self.batch_size * self.bucket_batches
            groups = [sorted(indices[i : i + size], key=lambda j: self.lengths[j]) for i in range(0, len(indices), size)]
        batches = []
        for group in groups:
            group_batches = [group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)]
            if self.lengths is not None:
                rng.shuffle(group_batches)  # sorted order would give a length curriculum within each group
            batches.extend(group_batches)
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, str, int]]]:
        # Validation (every_task) always builds epoch 0's examples: the same masks and negatives
        # at every evaluation, so held-out metrics are comparable across a run.
        epoch = 0 if self.every_task else self.epoch
        rng = np.random.default_rng([self.seed, epoch])
        batches = self._index_batches(rng)
        if self.every_task:
            keyed = [[(i, task, epoch) for i in batch] for task in self.tasks for batch in batches]
        else:
            chosen = rng.choice(len(self.tasks), size=len(batches), p=self.probs)
            keyed = [[(i, self.tasks[t], epoch) for i in batch] for batch, t in zip(batches, chosen)]
        skip = self.resume_batches if epoch == self.resume_epoch else 0
        return iter(keyed[skip:])

    def __len__(self) -> int:
        n = len(self.sampler)
        batches = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return batches * (len(self.tasks) if self.every_task else 1)
