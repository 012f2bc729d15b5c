"""Key mapping of BERT's encoder layers and pooler (shared by HF BERT, VisualBERT and UNITER
checkpoints) to and from vlbert's encoder, which fuses query, key and value into one matrix."""
from __future__ import annotations

import torch

from vlbert.convert.state import ConversionError, SourceState

# (BERT name inside encoder.layer.N, vlbert name inside encoder.layers.N); weight and bias each.
LAYER_PARTS = [
    ("attention.output.dense", "attention.out"),
    ("attention.output.LayerNorm", "attention.LayerNorm"),
    ("intermediate.dense", "ffn.up"),
    ("output.dense", "ffn.down"),
    ("output.LayerNorm", "ffn.LayerNorm"),
]
QKV = ("query", "key", "value")


def count_layers(keys, prefix: str) -> int:
    """Number of encoder layers under `prefix` ("encoder.layer." or "encoder.layers."), checking they run 0..N-1."""
    ids = sorted({int(k[len(prefix):].split(".")[0]) for k in keys if k.startswith(prefix)})
    if ids != list(range(len(ids))):
        raise ConversionError(f"encoder layers under {prefix!r} are not numbered 0..N-1: {ids}")
    return len(ids)


def bert_encoder_to_vlbert(
    source: SourceState, src_prefix: str, num_layers: int
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Encoder layers and pooler of a BERT-named state (keys under `src_prefix`) as vlbert
    VLBertModel keys; returns (tensors, target key -> source key)."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for i in range(num_layers):
        src = f"{src_prefix}encoder.layer.{i}."
        dst = f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            names = [f"{src}attention.self.{name}.{kind}" for name in QKV]
            out[f"{dst}attention.qkv.{kind}"] = torch.cat([source.take(name) for name in names])
            origin[f"{dst}attention.qkv.{kind}"] = " + ".join(names)
            for bert_part, vlbert_part in LAYER_PARTS:
                out[f"{dst}{vlbert_part}.{kind}"] = source.take(f"{src}{bert_part}.{kind}")
                origin[f"{dst}{vlbert_part}.{kind}"] = f"{src}{bert_part}.{kind}"
    for kind in ("weight", "bias"):
        out[f"pooler.dense.{kind}"] = source.take(f"{src_prefix}pooler.dense.{kind}")
        origin[f"pooler.dense.{kind}"] = f"{src_prefix}pooler.dense.{kind}"
    return out, origin


def vlbert_encoder_to_bert(state: dict[str, torch.Tensor], dst_prefix: str, num_layers: int) -> dict[str, torch.Tensor]:
    """The inverse: vlbert encoder layers and pooler (keys without "vlbert.") to BERT names under `dst_prefix`."""
    out: dict[str, torch.Tensor] = {}
    for i in range(num_layers):
        src = f"encoder.layers.{i}."
        dst = f"{dst_prefix}encoder.layer.{i}."
        for kind in ("weight", "bias"):
            for name, part in zip(QKV, state[f"{src}attention.qkv.{kind}"].chunk(3, dim=0)):
                out[f"{dst}attention.self.{name}.{kind}"] = part.clone()
            for bert_part, vlbert_part in LAYER_PARTS:
                out[f"{dst}{bert_part}.{kind}"] = state[f"{src}{vlbert_part}.{kind}"]
    for kind in ("weight", "bias"):
        out[f"{dst_prefix}pooler.dense.{kind}"] = state[f"pooler.dense.{kind}"]
    return out
