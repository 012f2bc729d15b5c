"""The Transformer encoder: BERT's post-LayerNorm layers with torch SDPA attention.

Padded batches run "packed": every per-token operation (projections, feed-forward, dropout,
LayerNorm) sees only the N real tokens [N, H]. With the 10-100 regions an adaptive extractor
gives, a batch padded to its longest example is ~40% padding; packed, it costs nothing. For
attention (`config.attention_path`, "auto" by default):
- on CPU each example attends over its own tokens (cost sum(n_i^2), not B * L^2) when that saves
  more than its per-example loop costs ("per_example"), else the batch goes back to the padded
  [B, heads, L, head_dim] layout for SDPA ("padded");
- on GPU the packed tokens stay packed: a jagged nested tensor [B, heads, j, head_dim] over them
  goes to SDPA's variable-length flash / memory-efficient kernels ("nested"; never cuDNN's, which
  plans anew for every shape). Forced on CPU it runs SDPA's math kernel (tests prove it there).
`config.compile_encoder` compiles each layer (torch.compile, dynamic token count) around the
attention kernel, which stays eager. Outputs at padded positions are zeros.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from vlbert.modeling.config import VLBertConfig


# SDPA kernels allowed on GPU. Not cuDNN's: it builds an execution plan for every new shape, and
# batches padded to their own longest example bring new shapes all the time. On an H200 (BERT-base,
# bf16, batch 128 of the 8-40 token / 10-100 region mix) 10 steps on new shapes took 8.4 s with cuDNN
# allowed (single steps up to 3.7 s) and 0.39 s with these; once every shape had been seen, cuDNN was
# ~5% faster (0.35 vs 0.37 s; ~30% at batch 16). Flash (no mask) and memory-efficient (masks,
# dropout) need no plans. docs/performance.md has the trade-off.
CUDA_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def activation(name: str) -> nn.Module:
    """The module for a HF `hidden_act` name (gelu_new is BERT's tanh approximation)."""
    return nn.ReLU() if name == "relu" else nn.GELU(approximate="none" if name == "gelu" else "tanh")


@dataclass
class Packing:
    """Where the real tokens of a padded [B, L] batch are: `index` [N] holds b * L + l of each,
    in batch order, so each example's tokens are consecutive rows of the packed [N, C] tensor."""

    index: torch.Tensor
    key_mask: torch.Tensor  # [B, L] bool
    path: str = "auto"  # config.attention_path
    _lengths: list[int] | None = field(default=None, repr=False)
    _per_example: bool | None = field(default=None, repr=False)
    _offsets: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def from_key_mask(cls, attention_mask: torch.Tensor, path: str = "auto") -> "Packing":
        """attention_mask [B, 1, 1, L] bool (True = real token); path: config.attention_path."""
        key_mask = attention_mask.reshape(attention_mask.shape[0], attention_mask.shape[-1])
        return cls(key_mask.reshape(-1).nonzero().squeeze(1), key_mask, path)

    @property
    def batch(self) -> int:
        return self.key_mask.shape[0]

    @property
    def length(self) -> int:
        return self.key_mask.shape[1]

    @property
    def lengths(self) -> list[int]:
        """Real tokens per example (read to the host once, on first use)."""
        if self._lengths is None:
            self._lengths = self.key_mask.sum(1).tolist()
        return self._lengths

    @property
    def offsets(self) -> torch.Tensor:
        """[B + 1] int64 on the batch's device: where each example's rows start in the packed
        tensor (the nested tensors' offsets; one tensor, so q, k and v share their ragged size)."""
        if self._offsets is None:
            self._offsets = F.pad(self.key_mask.sum(1).cumsum(0), (1, 0))
        return self._offsets

    def attention(self, width: int, device: torch.device) -> str:
        """The attention path this batch takes: "per_example", "padded" or "nested"."""
        if self.path != "auto":
            return self.path
        if device.type != "cpu":
            return "nested"
        return "per_example" if self.attend_per_example(width) else "padded"

    def attend_per_example(self, width: int) -> bool:
        """Whether attending example by example (CPU) beats padded attention for this batch: it
        saves the padded query-key pairs' FLOPs (4 * width each, at ~1e11 FLOP/s) but costs a
        Python loop of a few small kernels per example (~50 us each). Large models on long,
        uneven examples gain; many short examples (retrieval's 1024-pair scoring batches of a
        tiny model) lose up to 10x."""
        if self._per_example is None:
            saved = 4 * width * (self.batch * self.length**2 - sum(n * n for n in self.lengths))
            self._per_example = saved / 1e11 > 50e-6 * self.batch
        return self._per_example

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """[B, L, C] -> [N, C]."""
        return padded.reshape(self.batch * self.length, -1).index_select(0, self.index)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """[N, C] -> [B, L, C], zeros at padded positions."""
        padded = packed.new_zeros(self.batch * self.length, packed.shape[-1]).index_copy(0, self.index, packed)
        return padded.view(self.batch, self.length, -1)


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, dropout: float
) -> torch.Tensor:
    """dropout(softmax(q k^T / sqrt(d) over attended keys)) v, written out. q, k, v [..., L, d];
    key_mask broadcastable to [..., 1, L], bool, or None. Used on CPU: with attention dropout SDPA
    has no fused CPU kernel, and its math fallback costs ~20% more (q and k each rescaled, guards
    for rows with no attended key, which cannot occur here: [CLS] is always attended)."""
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask, float("-inf"))
    probs = scores.softmax(-1)
    if dropout > 0:
        probs = F.dropout(probs, dropout, training=True)
    return torch.matmul(probs, v)


def packed_attention(qkv: torch.Tensor, lengths: list[int], num_heads: int, dropout: float) -> torch.Tensor:
    """Each example attends over its own tokens only. qkv [N, 3H] packed (examples' rows
    consecutive, q|k|v along the last dim) -> context [N, H]."""
    width = qkv.shape[-1] // 3
    contexts = []
    for rows in qkv.split(lengths):
        parts = rows.view(-1, 3, num_heads, width // num_heads).split(1, dim=1)
        q, k, v = (part.squeeze(1).transpose(0, 1) for part in parts)  # [heads, n, d] each
        contexts.append(explicit_attention(q, k, v, None, dropout).transpose(0, 1).reshape(-1, width))
    return torch.cat(contexts)


def nested_attention(
    qkv: torch.Tensor, offsets: torch.Tensor, lengths: list[int], num_heads: int, dropout: float
) -> torch.Tensor:
    """Each example attends over its own tokens, in one SDPA call on a jagged nested tensor: no
    padded copy of the batch, and on GPU the variable-length flash / memory-efficient kernels.
    qkv [N, 3H] packed, offsets [B + 1] (Packing.offsets), lengths [B] -> context [N, H]."""
    rows, width = qkv.shape[0], qkv.shape[-1] // 3
    # Contiguous q, k, v [N, heads, d]: SDPA's jagged kernels (and its CPU math path) need each
    # of them contiguous once transposed to [B, heads, j, d].
    parts = qkv.view(rows, 3, num_heads, width // num_heads).unbind(1)
    q, k, v = (
        torch.nested.nested_tensor_from_jagged(
            part.contiguous(), offsets, min_seqlen=min(lengths), max_seqlen=max(lengths)
        ).transpose(1, 2)
        for part in parts
    )
    if qkv.device.type == "cuda":
        with sdpa_kernel(CUDA_SDPA_BACKENDS):
            context = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    else:
        context = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    return context.transpose(1, 2).values().reshape(rows, width)


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

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, packing: Packing | None = None
    ) -> torch.Tensor:
        """hidden [B, L, H], or [N, H] real tokens with `packing`; attention_mask [B, 1, 1, L] bool
        (True = key is attended), [B, 1, L, L] bool (per query: captioning's seq2seq mask) or None."""
        context = self.attend(self.qkv(hidden), attention_mask, packing)
        return self.LayerNorm(hidden + self.dropout(self.out(context)))

    # Eager under torch.compile: the attention kernels are single calls already, and the paths'
    # host-side choices (lengths, the per-example loop) would otherwise recompile per batch.
    @torch.compiler.disable
    def attend(self, qkv: torch.Tensor, attention_mask: torch.Tensor | None, packing: Packing | None) -> torch.Tensor:
        """qkv [B, L, 3H], or [N, 3H] with `packing` -> context [B, L, H] / [N, H]."""
        dropout = self.attention_dropout if self.training else 0.0
        if packing is None:
            return self.padded_attention(qkv, attention_mask, dropout)
        path = packing.attention(qkv.shape[-1] // 3, qkv.device)
        if path == "per_example":
            return packed_attention(qkv, packing.lengths, self.num_heads, dropout)
        if path == "nested":
            return nested_attention(qkv, packing.offsets, packing.lengths, self.num_heads, dropout)
        return packing.pack(self.padded_attention(packing.unpack(qkv), attention_mask, dropout))

    def attention_probs(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The attention probabilities forward's SDPA uses, written out (before attention dropout):
        softmax(q k^T / sqrt(d) + mask), float32. hidden [B, L, H] (zeros at padded positions);
        attention_mask as forward's, or an additive float mask -> [B, heads, L, L] (query, key).
        Zero at padded keys, and, for a [B, 1, 1, L] bool mask, in the rows of padded queries."""
        batch, length = hidden.shape[0], hidden.shape[1]
        parts = self.qkv(hidden).float().view(batch, length, 3, self.num_heads, self.head_dim).unbind(2)
        q, k = (part.transpose(1, 2) for part in parts[:2])  # [B, heads, L, d] each
        scores = torch.matmul(q * self.head_dim**-0.5, k.transpose(-1, -2))
        if attention_mask is None:
            return scores.softmax(-1)
        if attention_mask.dtype != torch.bool:
            return (scores + attention_mask.float()).softmax(-1)
        probs = scores.masked_fill(~attention_mask, float("-inf")).softmax(-1)
        if attention_mask.shape[1:3] == (1, 1):
            probs = probs * attention_mask.transpose(-1, -2)  # key mask as a query mask [B, 1, L, 1]
        return probs

    def padded_attention(self, qkv: torch.Tensor, attention_mask: torch.Tensor | None, dropout: float) -> torch.Tensor:
        """qkv [B, L, 3H] -> context [B, L, H]."""
        batch, length, width = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        # split (not unbind): its backward writes the q|k|v gradients into [B, L, 3H] in one pass
        parts = qkv.view(batch, length, 3, self.num_heads, self.head_dim).split(1, dim=2)
        q, k, v = (part.squeeze(2).transpose(1, 2) for part in parts)  # [B, heads, L, d] each
        if dropout > 0 and q.device.type == "cpu":
            context = explicit_attention(q, k, v, attention_mask, dropout)
        elif q.device.type == "cuda":
            with sdpa_kernel(CUDA_SDPA_BACKENDS):
                context = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=dropout)
        else:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=dropout)
        return context.transpose(1, 2).reshape(batch, length, width)


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

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, packing: Packing | None = None
    ) -> torch.Tensor:
        return self.ffn(self.attention(hidden, attention_mask, packing))


class Encoder(nn.Module):
    def __init__(self, config: VLBertConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = config.gradient_checkpointing
        self.attention_path = config.attention_path
        self.compile_encoder = config.compile_encoder
        self.compiled = False

    def compile_layers(self, device: torch.device) -> None:
        """torch.compile each layer once, when compile_encoder says so (None: on CUDA only).
        In place (`nn.Module.compile`): parameter names and state dicts are unchanged. The token
        count is dynamic, so batches of any length share one compiled graph."""
        if self.compiled or not (self.compile_encoder if self.compile_encoder is not None else device.type == "cuda"):
            return
        for layer in self.layers:
            layer.compile(dynamic=True)
        self.compiled = True

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, output_attentions: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """hidden [B, L, H]; attention_mask [B, 1, 1, L] bool, None (nothing padded) or [B, 1, L, L]
        bool (per query, key; run padded, never packed: every row must attend to some key) -> [B, L, H].

        output_attentions: also return every layer's attention probabilities, ([B, heads, L, L],
        ...) first layer first (SelfAttention.attention_probs). They are computed only when asked,
        beside (not instead of) the layers' own attention, whose path is the same either way."""
        self.compile_layers(hidden.device)
        packing = None
        if attention_mask is not None and attention_mask.dtype == torch.bool and attention_mask.shape[1:3] == (1, 1):
            packing = Packing.from_key_mask(attention_mask, self.attention_path)
            hidden = packing.pack(hidden)
        attentions = []
        for layer in self.layers:
            if output_attentions:
                attentions.append(layer.attention.attention_probs(hidden if packing is None else packing.unpack(hidden), attention_mask))
            if self.gradient_checkpointing and self.training:
                hidden = checkpoint(layer, hidden, attention_mask, packing, use_reentrant=False)
            else:
                hidden = layer(hidden, attention_mask, packing)
        hidden = hidden if packing is None else packing.unpack(hidden)
        return (hidden, tuple(attentions)) if output_attentions else hidden


class Pooler(nn.Module):
    """tanh(W h_[CLS]): the pooled output the ITM and VQA heads read."""

    def __init__(self, config: VLBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(sequence_output[:, 0]))
