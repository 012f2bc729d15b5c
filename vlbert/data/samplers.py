"""Samplers: an epoch-seeded shuffle, and a batch sampler that gives each batch a task,
groups examples of similar length, and can skip the batches a resumed run already saw.

Exact resume: every training key carries where its batch stands, (epoch, batch in epoch); the
datasets pass that on to their examples (`EXAMPLE_POSITION_KEY`) and the collate functions to the
batch (`BATCH_POSITION_KEYS`, plain ints). The datamodule takes it off each batch training
consumes (`take_batch_position`, in its `on_before_batch_transfer` hook, which Lightning calls in
the main process for the batch it is about to train on, never for batches DataLoader workers built
ahead) and saves the last one in checkpoints (`consumed_state`); a resumed run's TaskBatchSampler
starts right after it.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, MutableMapping, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DistributedSampler, Sampler

# In a training batch: the epoch its keys were drawn for, and its index in that epoch (0-based,
# counted from the epoch's start also in a resumed run). Plain ints, never model inputs.
BATCH_POSITION_KEYS = ("epoch", "batch_in_epoch")
# In an example built from a training key: (epoch, batch_in_epoch) of the key's batch.
EXAMPLE_POSITION_KEY = "batch_position"


def key_position(key: Any) -> tuple[int, int] | None:
    """(epoch, batch_in_epoch) of a training key (index, task, epoch, batch_in_epoch); None for
    other keys (an int, or a validation key (index, task, epoch))."""
    return (key[2], key[3]) if isinstance(key, tuple) and len(key) == 4 else None


def put_batch_position(batch: MutableMapping, examples: Sequence[Mapping]) -> None:
    """Give `batch` the position of its examples' batch (`BATCH_POSITION_KEYS`), if they have one."""
    position = examples[0].get(EXAMPLE_POSITION_KEY) if examples else None
    if position is not None:
        batch[BATCH_POSITION_KEYS[0]], batch[BATCH_POSITION_KEYS[1]] = int(position[0]), int(position[1])


def take_batch_position(batch: Any) -> tuple[int, int] | None:
    """Remove and return a training batch's (epoch, batch_in_epoch); None for other batches."""
    if not isinstance(batch, MutableMapping) or BATCH_POSITION_KEYS[1] not in batch:
        return None
    epoch_key, index_key = BATCH_POSITION_KEYS
    return int(batch.pop(epoch_key)), int(batch.pop(index_key))


def consumed_state(position: tuple[int, int]) -> dict:
    """A datamodule's resume state once training consumed the batch at `position`: the epoch and
    how many of its batches were consumed (TaskBatchSampler's resume_epoch / resume_batches)."""
    epoch, index = position
    return {"epoch": epoch, "batches": index + 1}


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
    """Yields batches of (example index, task, epoch, batch_in_epoch) keys (every_task:
    (example index, task, epoch); validation batches have no position).

    tasks/weights: one task drawn per batch with probability proportional to its weight
      (a single task, e.g. "mix", gives every batch that task);
    every_task: instead yield each batch once per task, always with epoch 0's keys (validation:
      every metric on the same examples each time);
    lengths: when given, indices are grouped `bucket_batches` batches at a time and sorted by
      length inside the group, so padding stays small; batch order is then shuffled;
    max_tokens: instead of `batch_size` examples, a batch holds as many examples as fit in this
      many tokens, counted as examples x the batch's longest length (UNITER's rule: padded
      tokens; with examples sorted by length, about the real ones). `lengths` (an example's
      text + region tokens) are then required. The epoch's examples are sorted by length, equal
      lengths in the epoch's shuffled order, cut into batches, and the batches shuffled: the
      sorted lengths, hence the batch boundaries and the number of batches, are the same in
      every epoch, so `len()` (the learning-rate schedule's length) and resume positions are
      exact;
    resume_epoch/resume_batches: skip the batches of that epoch a checkpointed run already consumed
      (all of them: start the next epoch). Lightning creates a resumed run's first iterator
      before it sets the sampler's epoch, so an iterator made while the sampler's epoch is still
      before the resume position moves it there first (`set_epoch`, which Lightning then repeats).
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
        max_tokens: int | None = None,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        check_token_budget(sampler, max_tokens, lengths, drop_last)
        self.tasks = list(tasks)
        probs = np.asarray(weights if weights is not None else [1.0] * len(self.tasks), dtype=np.float64)
        self.probs = probs / probs.sum()
        self.every_task = every_task
        self.lengths = lengths
        self.bucket_batches = bucket_batches
        self.seed = seed
        self.resume_epoch = resume_epoch
        self.resume_batches = resume_batches
        self.max_tokens = max_tokens
        self._budget_batch_count: int | None = None

    @property
    def epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def _index_batches(self, rng: np.random.Generator) -> list[list[int]]:
        indices = list(self.sampler)
        if self.max_tokens is not None:
            batches = token_budget_batches(indices, self.lengths, self.max_tokens)
            rng.shuffle(batches)  # sorted order would be a length curriculum
            return batches
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

    def _resume_position(self) -> tuple[int, int]:
        """(epoch, batches to skip) where the resumed run goes on: after a whole epoch, the next one."""
        if self.resume_batches >= len(self):
            return self.resume_epoch + 1, 0
        return self.resume_epoch, self.resume_batches

    def __iter__(self) -> Iterator[list[tuple]]:
        # Validation (every_task) always builds epoch 0's examples: the same masks and negatives
        # at every evaluation, so held-out metrics are comparable across a run.
        if self.every_task:
            epoch, skip = 0, 0
        else:
            epoch, skip = self.epoch, 0
            if self.resume_epoch >= 0:
                resume_epoch, resume_skip = self._resume_position()
                if epoch < resume_epoch and hasattr(self.sampler, "set_epoch"):
                    self.sampler.set_epoch(resume_epoch)
                    epoch = self.epoch
                if epoch == resume_epoch:
                    skip = resume_skip
        rng = np.random.default_rng([self.seed, epoch])
        batches = self._index_batches(rng)
        if self.every_task:
            keyed = [[(i, task, epoch) for i in batch] for task in self.tasks for batch in batches]
        else:
            chosen = rng.choice(len(self.tasks), size=len(batches), p=self.probs)
            keyed = [
                [(i, self.tasks[chosen[b]], epoch, b) for i in batches[b]] for b in range(skip, len(batches))
            ]
        return iter(keyed)

    def __len__(self) -> int:
        if self.max_tokens is not None:
            if self._budget_batch_count is None:  # the same in every epoch (see max_tokens)
                self._budget_batch_count = len(token_budget_batches(list(range(len(self.lengths))), self.lengths, self.max_tokens))
            batches = self._budget_batch_count
        else:
            n = len(self.sampler)
            batches = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return batches * (len(self.tasks) if self.every_task else 1)


def token_budget_batches(indices: Sequence[int], lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """`indices` sorted by length (stable: equal lengths keep their order) and cut into
    consecutive batches of at most `max_tokens` tokens, counted as examples x longest length."""
    batches: list[list[int]] = []
    batch: list[int] = []
    for index in sorted(indices, key=lambda i: lengths[i]):
        if batch and (len(batch) + 1) * lengths[index] > max_tokens:  # sorted: this one is the longest
            batches.append(batch)
            batch = []
        batch.append(index)
    if batch:
        batches.append(batch)
    return batches


def check_token_budget(sampler: Sampler[int], max_tokens: int | None, lengths: Sequence[int] | None, drop_last: bool) -> None:
    """Refuse a token budget TaskBatchSampler cannot keep exact."""
    if max_tokens is None:
        return
    if lengths is None:
        raise ValueError("a token budget (max_tokens) needs the examples' lengths")
    if max(lengths, default=0) > max_tokens:
        raise ValueError(f"max_tokens {max_tokens} is less than the longest example ({max(lengths)} tokens)")
    if drop_last:
        raise ValueError("drop_last applies to batches of batch_size examples, not to token budgets")
    if len(sampler) != len(lengths) or isinstance(sampler, DistributedSampler):
        # Each DDP rank would get its own, changing, share of the lengths, hence its own number
        # of batches: ranks would fall out of step.
        raise ValueError("token budgets need every epoch to hold all the examples (EpochSampler): not under "
                         "DDP's DistributedSampler; use batch_size there")
