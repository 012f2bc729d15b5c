"""Text and region embeddings, the two halves of the single stream."""
from __future__ import annotations

import torch
from torch import nn

from vlbert.modeling.config import VLBertConfig


class TextEmbeddings(nn.Module):
    """BERT's embeddings: word + position + token type, LayerNorm, dropout. Names match HF BERT."""

    def __init__(self, config: VLBertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] -> [B, T, H]."""
        length = input_ids.shape[1]
        if length > self.position_embeddings.num_embeddings:
            raise ValueError(f"text of {length} tokens exceeds max_position_embeddings {self.position_embeddings.num_embeddings}")
        positions = torch.arange(length, device=input_ids.device)
        embeddings = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        if token_type_ids is None:
            embeddings = embeddings + self.token_type_embeddings.weight[0]
        else:
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(embeddings))


class RegionEmbeddings(nn.Module):
    """Region features (and their 7-d box locations) projected into the hidden space.

    "uniter": LN(W_f f) + LN(W_l loc) + text type embedding 1, LayerNorm, dropout.
    "visualbert": W_f f + visual type embedding 1 + visual position embedding 0, then the text
    LayerNorm (VisualBERT normalises the concatenated sequence with a single LayerNorm).

    Regions masked for masked-region modelling (their features zeroed) take a learned feature
    vector instead, as UNITER's mask embedding does: an all-zero feature projects to the bias
    alone, whose LayerNorm has near-zero variance and so near-infinite gradients (measured:
    ~1e5 on the projection bias of a tiny model), which drive the bias, shared by every region,
    until all regions embed alike and image-text matching cannot see the image.
    """

    def __init__(self, config: VLBertConfig) -> None:
        super().__init__()
        self.style = config.region_embedding
        hidden = config.hidden_size
        self.feature_proj = nn.Linear(config.region_feature_dim, hidden)
        self.location_proj = nn.Linear(config.region_location_dim, hidden) if config.region_location_dim else None
        if self.style == "uniter":
            self.feature_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
            self.location_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps) if self.location_proj else None
            self.LayerNorm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        else:
            self.type_embeddings = nn.Embedding(config.type_vocab_size, hidden)
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, hidden)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        # unit scale per dimension, like a real feature, so a masked region's projection has the
        # same variance (and LayerNorm gradient scale) as an unmasked one's
        self.mask_embedding = nn.Parameter(torch.randn(config.region_feature_dim))

    def forward(
        self,
        features: torch.Tensor,
        locations: torch.Tensor | None,
        text: TextEmbeddings,
        masked: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """features [B, R, D], locations [B, R, 7], masked [B, R] (True: masked for MRM) -> [B, R, H];
        `text` lends its shared parameters."""
        projected = self.feature_proj(features)
        if masked is not None:
            # projected once and put in place after the projection: the same as projecting the
            # substituted features, without a gradient for the [B, R, D] feature input
            projected = torch.where(masked[..., None], self.feature_proj(self.mask_embedding.to(features.dtype)), projected)
        if self.style == "uniter":
            embeddings = self.feature_norm(projected)
            if self.location_proj is not None:
                embeddings = embeddings + self.location_norm(self.location_proj(locations))
            embeddings = self.LayerNorm(embeddings + text.token_type_embeddings.weight[1])
        else:
            embeddings = projected + self.type_embeddings.weight[1] + self.position_embeddings.weight[0]
            if self.location_proj is not None:
                embeddings = embeddings + self.location_proj(locations)
            embeddings = text.LayerNorm(embeddings)
        return self.dropout(embeddings)
