"""Masking for MLM and masked-region modelling: pure functions of their inputs and an RNG."""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100


def mask_tokens(
    input_ids: np.ndarray,
    rng: np.random.Generator,
    mask_token_id: int,
    vocab_size: int,
    special_ids: set[int] | frozenset[int],
    prob: float = 0.15,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking: choose `prob` of the non-special tokens (at least one); of those 80% become
    [MASK], 10% a random token, 10% stay. Returns (masked ids [T], labels [T] with -100 where
    no prediction is asked)."""
    ids = np.array(input_ids, dtype=np.int64)
    labels = np.full_like(ids, IGNORE_INDEX)
    candidates = np.flatnonzero(~np.isin(ids, list(special_ids)))
    if candidates.size == 0:
        return ids, labels
    chosen = candidates[rng.random(candidates.size) < prob]
    if chosen.size == 0:
        chosen = rng.choice(candidates, 1)
    labels[chosen] = ids[chosen]
    action = rng.random(chosen.size)
    ids[chosen[action < 0.8]] = mask_token_id
    randomised = chosen[(action >= 0.8) & (action < 0.9)]
    ids[randomised] = rng.integers(0, vocab_size, randomised.size)
    return ids, labels


def mask_regions(num_regions: int, rng: np.random.Generator, prob: float = 0.15) -> np.ndarray:
    """[R] bool: which regions to mask (their features are zeroed); at least one when R > 0."""
    masked = rng.random(num_regions) < prob
    if num_regions and not masked.any():
        masked[rng.integers(num_regions)] = True
    return masked
