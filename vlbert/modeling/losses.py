"""The models' loss functions: pure functions of logits and targets, checked on hand-made tensors."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [M, V] at masked positions only, labels [M] -> (mean cross-entropy, accuracy)."""
    return F.cross_entropy(logits.float(), labels), (logits.argmax(-1) == labels).float().mean()


def mrfr_loss(predicted: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """[M, D] predicted and original features of masked regions -> mean squared error over all elements."""
    return F.mse_loss(predicted.float(), original.float())


def mrc_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, C] logits, [M] detector top class -> (mean cross-entropy, accuracy)."""
    return F.cross_entropy(logits.float(), labels), (logits.argmax(-1) == labels).float().mean()


def mrc_kl_loss(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """KL(detector distribution || softmax(logits)), summed over classes, mean over the M regions."""
    target = target_probs.float()
    target = target / target.sum(-1, keepdim=True).clamp_min(1e-12)
    return F.kl_div(F.log_softmax(logits.float(), -1), target, reduction="sum") / max(len(logits), 1)


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 2] logits, [B] labels (1 = the caption belongs to the image) -> (cross-entropy, accuracy)."""
    return F.cross_entropy(logits.float(), labels), (logits.argmax(-1) == labels).float().mean()


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of logits [B, A] against soft scores [B, A] in [0, 1], summed over
    answers and averaged over questions (UNITER: mean over all entries times A), so the loss
    scale does not shrink as the vocabulary grows."""
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float()) * logits.shape[1]
