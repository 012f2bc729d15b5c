"""Ranking losses on ITM scores of a positive pair and its (hard) negatives.

A pair's score is the ITM head's log-odds of "matched", ``logit[1] - logit[0]``: it ranks
pairs exactly as p(matched) does, without the ties that a saturated softmax produces.

All functions take ``positive [B]`` (the score of each positive pair) and ``negatives
[B, K]`` (scores of its K negatives, which share the caption or the image) and return a
scalar.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("itm", "margin", "softmax")


def _check(positive: torch.Tensor, negatives: torch.Tensor) -> None:
    if positive.ndim != 1 or negatives.ndim != 2 or negatives.shape[0] != positive.shape[0]:
        raise ValueError(
            f"expected positive [B] and negatives [B, K], got {tuple(positive.shape)} and {tuple(negatives.shape)}"
        )


def itm_loss(positive: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Binary matched / not-matched cross-entropy, the pretraining ITM objective, with the
    positive and the mean over negatives weighted equally (so K does not swamp the positive)."""
    _check(positive, negatives)
    pos = F.binary_cross_entropy_with_logits(positive, torch.ones_like(positive))
    if negatives.shape[1] == 0:
        return pos
    neg = F.binary_cross_entropy_with_logits(negatives, torch.zeros_like(negatives))
    return pos + neg


def margin_loss(positive: torch.Tensor, negatives: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """UNITER's triplet hinge on probabilities: mean of max(0, margin + p(neg) - p(pos))."""
    _check(positive, negatives)
    if negatives.shape[1] == 0:
        return positive.new_zeros(())
    return torch.clamp(margin + torch.sigmoid(negatives) - torch.sigmoid(positive)[:, None], min=0).mean()


def softmax_loss(positive: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of picking the positive among itself and its negatives (listwise)."""
    _check(positive, negatives)
    logits = torch.cat([positive[:, None], negatives], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(positive), dtype=torch.long, device=logits.device))


def ranking_loss(name: str, positive: torch.Tensor, negatives: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    if name == "itm":
        return itm_loss(positive, negatives)
    if name == "margin":
        return margin_loss(positive, negatives, margin)
    if name == "softmax":
        return softmax_loss(positive, negatives)
    raise ValueError(f"unknown retrieval loss {name!r}; choose one of {LOSSES}")
