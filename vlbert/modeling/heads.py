"""Prediction heads on the shared encoder: MLM, masked-region feature/class, ITM.

Heads take only the hidden states they score (e.g. the masked positions, [M, H]) so that
no vocabulary-size logits are computed for positions without a target.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlbert.modeling.config import VLBertConfig
from vlbert.modeling.encoder import activation


class Transform(nn.Module):
    """dense -> activation -> LayerNorm, BERT's prediction-head transform."""

    def __init__(self, config: VLBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(hidden)))


class MLMHead(nn.Module):
    """Vocabulary logits with the decoder tied to the word embeddings. [M, H] -> [M, V]."""

    def __init__(self, config: VLBertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.transform = Transform(config)
        # Tied to the text word embeddings; kept out of the module tree so the weight is
        # registered (and saved) once, by its owner.
        self._tied = [word_embeddings]
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(hidden), self._tied[0].weight, self.bias)


class RegionFeatureHead(nn.Module):
    """Regress the original region feature. [M, H] -> [M, D]; the output layer is tied
    (transposed) to the region feature projection, as UNITER does."""

    def __init__(self, config: VLBertConfig, feature_proj: nn.Linear) -> None:
        super().__init__()
        self.transform = Transform(config)
        self._tied = [feature_proj]  # registered once, by the region embeddings
        self.bias = nn.Parameter(torch.zeros(config.region_feature_dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(hidden), self._tied[0].weight.t(), self.bias)


class RegionClassHead(nn.Module):
    """Detector-class logits for masked regions. [M, H] -> [M, C]."""

    def __init__(self, config: VLBertConfig) -> None:
        super().__init__()
        self.transform = Transform(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_region_classes)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.transform(hidden))


class ITMHead(nn.Module):
    """Matched / not matched from the pooled output. [B, H] -> [B, 2] (index 1 = matched)."""

    def __init__(self, config: VLBertConfig) -> None:
        super().__init__()
        self.classifier = nn.Linear(config.hidden_size, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled)
