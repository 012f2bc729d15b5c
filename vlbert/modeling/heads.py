"""Prediction heads on the shared encoder: MLM, masked-region feature/class, ITM, VQA.

Heads take only the hidden states they score (e.g. the masked positions, [M, H]) so that
no vocabulary-size logits are computed for positions without a target. A head that shares a
weight with the encoder (MLM: the word embeddings; MRFR: the region feature projection) is handed
the embeddings module that owns it and keeps that out of its own module tree, so the weight is
registered and saved once, by its owner, and is read from the owner at every call (an embedding
replaced by set_input_embeddings is the one used): the one way weights are tied here.
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

    def __init__(self, config: VLBertConfig, text_embeddings: nn.Module) -> None:
        super().__init__()
        self.transform = Transform(config)
        self._owner = [text_embeddings]  # a TextEmbeddings, outside this module tree
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(hidden), self._owner[0].word_embeddings.weight, self.bias)


class RegionFeatureHead(nn.Module):
    """Regress the original region feature. [M, H] -> [M, D]; the output layer is tied
    (transposed) to the region feature projection, as UNITER does."""

    def __init__(self, config: VLBertConfig, region_embeddings: nn.Module) -> None:
        super().__init__()
        self.transform = Transform(config)
        self._owner = [region_embeddings]  # a RegionEmbeddings, outside this module tree
        self.bias = nn.Parameter(torch.zeros(config.region_feature_dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(hidden), self._owner[0].feature_proj.weight.t(), self.bias)


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


class VQAHead(nn.Module):
    """Answer logits [B, A] from the encoder outputs, in one of two styles (config.vqa_head_style):

    "pooled_mlp" (UNITER, and what vlbert fine-tunes by default): pooled output -> Linear(H, 2H) ->
        GELU -> LayerNorm(2H) -> Linear(2H, A); parameter names match UNITER's converted vqa_output.
    "token_linear" (VisualBertForQuestionAnswering): the hidden state of the text token before the
        final [SEP] -> Linear(H, A).
    """

    def __init__(self, config: VLBertConfig, num_answers: int) -> None:
        super().__init__()
        if num_answers < 1:
            raise ValueError(f"a VQA head needs at least one answer, got {num_answers}")
        self.style = config.vqa_head_style
        hidden = config.hidden_size
        if self.style == "pooled_mlp":
            self.dense = nn.Linear(hidden, 2 * hidden)
            self.LayerNorm = nn.LayerNorm(2 * hidden, eps=config.layer_norm_eps)
            self.classifier = nn.Linear(2 * hidden, num_answers)
        else:
            self.classifier = nn.Linear(hidden, num_answers)

    def forward(self, sequence_output: torch.Tensor, pooled_output: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """sequence_output [B, T+R, H], pooled_output [B, H], text_mask [B, T] -> [B, A]."""
        if self.style == "pooled_mlp":
            return self.classifier(self.LayerNorm(F.gelu(self.dense(pooled_output))))
        position = text_mask.long().sum(1) - 2
        if bool((position < 0).any()):
            raise ValueError("the VisualBERT VQA head reads the token before the final [SEP]: every text needs >= 2 tokens")
        return self.classifier(sequence_output[torch.arange(len(position), device=position.device), position])
