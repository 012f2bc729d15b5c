"""Pretraining objectives: their settings and pure loss functions on hand-checkable tensors."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

TASKS = ("mlm", "mrfr", "mrc", "mrc_kl", "itm")
REGION_TASKS = ("mrfr", "mrc", "mrc_kl")


@dataclass
class Objectives:
    """Which objectives run and how they mix.

    Weights: 0 switches an objective off. mixing="sample" draws one task per step with
    probability proportional to its weight (UNITER); mixing="sum" gives every example one
    role (ITM pair, text-masked or region-masked matched pair), drawn with the weights as
    ratios (the region objectives share the region role), and adds the weighted losses.
    """

    mlm: float = 1.0  # masked language modelling
    mrfr: float = 1.0  # masked-region feature regression (L2 to the original feature)
    mrc: float = 0.0  # masked-region classification to the detector's top class
    mrc_kl: float = 1.0  # KL to the detector's class distribution
    itm: float = 1.0  # image-text matching
    mixing: str = "sample"
    text_mask_prob: float = 0.15
    region_mask_prob: float = 0.15
    itm_negative_prob: float = 0.5

    def __post_init__(self) -> None:
        if self.mixing not in ("sample", "sum"):
            raise ValueError(f"objectives.mixing must be 'sample' or 'sum', got {self.mixing!r}")
        if any(w < 0 for w in self.weights().values()):
            raise ValueError(f"objective weights must be >= 0, got {self.weights()}")
        if not any(self.weights().values()):
            raise ValueError("every objective weight is 0: enable at least one of " + ", ".join(TASKS))
        for name in ("text_mask_prob", "region_mask_prob", "itm_negative_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"objectives.{name} must be in [0, 1]")

    def weights(self) -> dict[str, float]:
        return {task: float(getattr(self, task)) for task in TASKS}

    def enabled(self) -> list[str]:
        return [task for task, weight in self.weights().items() if weight > 0]

    @property
    def needs_class_labels(self) -> bool:
        return self.mrc > 0

    @property
    def needs_class_probs(self) -> bool:
        return self.mrc_kl > 0


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
