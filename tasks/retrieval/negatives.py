"""Negative sampling and hard-negative selection for ITM fine-tuning.

UNITER's hard-negative recipe: for each positive pair, sample many negatives (UNITER:
399 images for a caption and, separately, 399 captions for an image), score them all with
the current model without gradients, and train on the positive plus the hardest few
(UNITER: 31), i.e. the negatives the model currently finds most plausible. Sampling is
here; selection is a pure function of the scores so it can be tested on hand-made tensors.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def sample_negatives(pool_size: int, exclude: Sequence[int], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct indices from ``range(pool_size)`` that are not in ``exclude``.

    ``exclude`` holds the right answers (the caption's image, or all captions of the
    image), which must never be used as negatives. Returns int64 [n]; the cost grows with
    ``n`` and ``len(exclude)``, not with the pool (145K captions in Flickr30K train).
    """
    excluded = sorted({int(i) for i in exclude if 0 <= int(i) < pool_size})
    available = pool_size - len(excluded)
    if n > available:
        raise ValueError(
            f"cannot sample {n} negatives from {available} candidates ({pool_size} in the split, "
            f"{len(excluded)} excluded as right answers); lower the negative counts in the config "
            "or use a larger split"
        )
    picked = rng.choice(available, size=n, replace=False).astype(np.int64)
    # Map [0, available) onto the pool without the excluded indices: walking the excluded
    # indices in ascending order, each one at or below a value shifts that value up by one.
    for index in excluded:
        picked += picked >= index
    return picked


def select_hardest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest-scoring negatives in each row.

    scores [B, N] (higher = the model thinks the pair matches) -> indices [B, k], hardest
    first; equal scores keep the lower index first (a stable sort), so the choice is
    deterministic.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be [B, N], got shape {tuple(scores.shape)}")
    if not 0 <= k <= scores.shape[1]:
        raise ValueError(f"cannot keep {k} hardest of {scores.shape[1]} sampled negatives")
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
