"""AdamW with decay / no-decay parameter groups and a linear warm-up then linear decay schedule:
the one optimiser every training job builds."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import lightning as L
import torch
from torch import nn


@dataclass
class Optimization:
    """AdamW with linear warm-up then linear decay to zero over the run.

    Args:
        lr: peak learning rate.
        weight_decay: AdamW decay of weight matrices (never of biases or LayerNorms).
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup: warm-up length, a fraction of the total steps when < 1, else a number of steps.
    """

    lr: float = 5e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup: float = 0.1


def build_optimizer(
    module: L.LightningModule,
    optimization: Optimization,
    parts: Sequence[tuple[nn.Module, float]] | None = None,
):
    """AdamW without weight decay on biases and LayerNorm weights; warm-up + linear decay schedule.

    parts: (submodule, learning-rate multiplier) pairs, e.g. a task head at 10x the encoder's
    rate; by default the whole module at 1x.
    """
    groups = []
    for part, multiplier in parts or [(module, 1.0)]:
        params = [p for p in part.parameters() if p.requires_grad]
        lr = optimization.lr * multiplier
        groups.append({"params": [p for p in params if p.ndim >= 2], "weight_decay": optimization.weight_decay, "lr": lr})
        groups.append({"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": lr})
    optimizer = torch.optim.AdamW(
        groups, lr=optimization.lr, betas=tuple(optimization.betas), eps=optimization.eps,
        # Fused (one kernel per step) where torch has it, except under Lightning's mixed precision
        # with gradient clipping, which refuses optimizers that unscale gradients themselves.
        fused=module.device.type in ("cuda", "cpu") and not (
            str(getattr(module.trainer, "precision", "")).endswith("-mixed") and (getattr(module.trainer, "gradient_clip_val", 0) or 0) > 0
        ),
    )
    total = max(int(module.trainer.estimated_stepping_batches), 1)
    warmup = int(optimization.warmup * total) if optimization.warmup < 1 else int(optimization.warmup)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(total - warmup, 1))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
