"""VLBertConfig: the one config object every model module takes."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

REGION_EMBEDDING_STYLES = ("uniter", "visualbert")


@dataclass
class VLBertConfig:
    """Sizes of the text encoder (BERT's names, so a BERT config.json maps field for field)
    and of the region branch.

    region_embedding:
      "uniter": LN(W_f f) + LN(W_l loc) + type embedding 1 (shared with text), then LN, dropout.
      "visualbert": W_f f + own visual type embedding + own visual position embedding (id 0),
        then the text LayerNorm (VisualBERT normalises the concatenation with one LayerNorm).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    initializer_range: float = 0.02
    region_feature_dim: int = 2048
    region_location_dim: int = 7
    region_embedding: str = "uniter"
    num_region_classes: int = 0
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.region_embedding not in REGION_EMBEDDING_STYLES:
            raise ValueError(f"region_embedding must be one of {REGION_EMBEDDING_STYLES}, got {self.region_embedding!r}")
        if self.region_location_dim not in (0, 7):
            raise ValueError(f"region_location_dim must be 7 ([x1,y1,x2,y2,w,h,w*h]) or 0 (none), got {self.region_location_dim}")
        if self.hidden_act not in ("gelu", "gelu_new", "relu", "gelu_pytorch_tanh"):
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, ignore_unknown: bool = False) -> "VLBertConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown and not ignore_unknown:
            raise ValueError(f"unknown VLBertConfig key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_bert(cls, name_or_path: str | os.PathLike, **region_settings) -> "VLBertConfig":
        """Take the text sizes from a HF BERT config (hub name or directory), region settings from kwargs."""
        from transformers import AutoConfig

        bert = AutoConfig.from_pretrained(str(name_or_path)).to_dict()
        return cls.from_dict({**bert, **region_settings}, ignore_unknown=True)

    def save(self, directory: str | os.PathLike) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        values = {"model_type": "vlbert", **self.to_dict()}
        (Path(directory) / "config.json").write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "VLBertConfig":
        path = Path(directory) / "config.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: is {directory} a vlbert model directory (save_pretrained)?")
        values = json.loads(path.read_text())
        if values.pop("model_type", None) != "vlbert":
            raise ValueError(f"{path} is not a vlbert config (model_type != 'vlbert'); to bring in another "
                             "model's checkpoint use `vlbert convert`")
        return cls.from_dict(values)
