"""The Transformer encoder: BERT's post-LayerNorm layers with torch SDPA attention."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vlbert.modeling.config import VLBertConfig


def activation(name: str) -> nn.Module:
    """The module for a HF `hidden_act` name (gelu_new is BERT's tanh approximation)."""
    return nn.ReLU() if name == "relu" else nn.GELU(approximate="none" if name == "gelu" else "tanh")


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection; residual + LayerNorm after."""

    def __init__(self, config: VLBertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.attention_dropout = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """hidden [B, L, H]; attention_mask [B, 1, 1, L] bool (True = key is attended) or None."""
        batch, length, width = hidden.shape
        q, k, v = self.qkv(hidden).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attention_mask, dropout_p=self.attention_dropout if self.training else 0.0
        )
        context = context.transpose(1, 2).reshape(batch, length, width)
        return self.LayerNorm(hidden + self.dropout(self.out(context)))


class FeedForward(nn.Module):
    def __init__(self, config: VLBertConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(hidden + self.dropout(self.down(self.act(self.up(hidden)))))


class EncoderLayer(nn.Module):
    def __init__(self, config: VLBertConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(config)
        self.ffn = FeedForward(config)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.ffn(self.attention(hidden, attention_mask))


class Encoder(nn.Module):
    def __init__(self, config: VLBertConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = config.gradient_checkpointing

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                hidden = checkpoint(layer, hidden, attention_mask, use_reentrant=False)
            else:
                hidden = layer(hidden, attention_mask)
        return hidden


class Pooler(nn.Module):
    """tanh(W h_[CLS]): the pooled output the ITM and VQA heads read."""

    def __init__(self, config: VLBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(sequence_output[:, 0]))
