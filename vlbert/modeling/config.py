"""The model's configuration: `ModelSettings`, the typed fields users set (the `model.model`
section of every training config), and `VLBertConfig`, the transformers `PreTrainedConfig` that
carries them in every model directory's config.json (model_type "vlbert")."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from transformers import PreTrainedConfig

REGION_EMBEDDING_STYLES = ("uniter", "visualbert")
VQA_HEAD_STYLES = ("pooled_mlp", "token_linear")
ACTIVATIONS = ("gelu", "gelu_new", "relu", "gelu_pytorch_tanh")
ATTENTION_PATHS = ("auto", "padded", "per_example", "nested")
# The fields a BERT config does not have (the region branch, how the encoder runs): kept from the
# settings when the text sizes come from a BERT checkpoint.
REGION_FIELDS = (
    "region_feature_dim", "region_location_dim", "region_embedding", "num_region_classes", "gradient_checkpointing",
    "attention_path", "compile_encoder",
)


@dataclass
class ModelSettings:
    """Sizes of the text encoder (BERT's names, so a BERT config.json maps field for field) and of
    the region branch.

    Args:
        vocab_size: word-piece vocabulary size (>= the tokenizer's length).
        hidden_size: width of every layer.
        num_hidden_layers: Transformer layers.
        num_attention_heads: attention heads per layer (hidden_size must be a multiple).
        intermediate_size: width of the feed-forward layers.
        hidden_act: gelu, gelu_new, relu or gelu_pytorch_tanh.
        hidden_dropout_prob: dropout after embeddings, attention output and feed-forward.
        attention_probs_dropout_prob: dropout on attention probabilities.
        max_position_embeddings: the longest text, in tokens.
        type_vocab_size: token types (0 text, 1 regions).
        layer_norm_eps: LayerNorm epsilon.
        pad_token_id: the tokenizer's padding id.
        initializer_range: std of the normal initialisation of new weights.
        region_feature_dim: dimension of the stored region features.
        region_location_dim: 7 ([x1, y1, x2, y2, w, h, w*h] / image size) or 0 (no box input).
        region_embedding: "uniter": LN(W_f f) + LN(W_l loc) + type embedding 1 (shared with text),
            then LN, dropout. "visualbert": W_f f + own visual type embedding + own visual position
            embedding (id 0), then the text LayerNorm (VisualBERT normalises the concatenation once).
        num_region_classes: detector classes for masked-region classification (0: no MRC head).
        gradient_checkpointing: recompute each layer's activations in the backward pass (less memory).
        attention_path: how padded batches attend (the results agree; only speed differs):
            "auto" (CPU: per example or padded, whichever the batch's lengths favour; GPU:
            nested), "padded" (back to [B, L] for SDPA), "per_example" (a loop over the
            examples), "nested" (one SDPA call on a jagged nested tensor of the packed tokens).
        compile_encoder: torch.compile the encoder layers: true, false, or null (auto: on CUDA;
            on CPU compiling does not pay, docs/performance.md).
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
    attention_path: str = "auto"
    compile_encoder: bool | None = None

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.region_embedding not in REGION_EMBEDDING_STYLES:
            raise ValueError(f"region_embedding must be one of {REGION_EMBEDDING_STYLES}, got {self.region_embedding!r}")
        if self.region_location_dim not in (0, 7):
            raise ValueError(f"region_location_dim must be 7 ([x1,y1,x2,y2,w,h,w*h]) or 0 (none), got {self.region_location_dim}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; use one of {ACTIVATIONS}")
        if self.attention_path not in ATTENTION_PATHS:
            raise ValueError(f"attention_path must be one of {ATTENTION_PATHS}, got {self.attention_path!r}")
        if self.compile_encoder not in (None, True, False):
            raise ValueError(f"compile_encoder must be true, false or null (auto: on CUDA), got {self.compile_encoder!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(ModelSettings))


class VLBertConfig(PreTrainedConfig):
    """A `PreTrainedConfig` holding the `ModelSettings` fields as attributes (validated by them),
    plus what a task model needs: `id2label` (the VQA answers) and `vqa_head_style`.

    `VLBertConfig(hidden_size=256, ...)`, `from_pretrained(dir)` and `save_pretrained(dir)` work as
    for any transformers config.
    """

    model_type = "vlbert"

    def __post_init__(self, **kwargs) -> None:
        given = {name: kwargs.pop(name) for name in SETTING_NAMES if name in kwargs}
        for name, value in ModelSettings(**given).to_dict().items():
            setattr(self, name, value)
        # "pooled_mlp" (UNITER): MLP on the pooled output; "token_linear" (VisualBERT): a linear
        # classifier on the text token before the final [SEP].
        self.vqa_head_style = kwargs.pop("vqa_head_style", "pooled_mlp")
        if self.vqa_head_style not in VQA_HEAD_STYLES:
            raise ValueError(f"vqa_head_style must be one of {VQA_HEAD_STYLES}, got {self.vqa_head_style!r}")
        kwargs.setdefault("tie_word_embeddings", False)  # the MLM head shares the word embeddings itself
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def settings(self) -> ModelSettings:
        return ModelSettings(**{name: getattr(self, name) for name in SETTING_NAMES})

    @classmethod
    def from_settings(cls, settings: ModelSettings | dict, **extra) -> "VLBertConfig":
        values = settings.to_dict() if isinstance(settings, ModelSettings) else dict(settings)
        unknown = sorted(set(values) - set(SETTING_NAMES))
        if unknown:
            raise ValueError(f"unknown model setting(s) {unknown}; valid: {list(SETTING_NAMES)}")
        return cls(**{**values, **extra})

    @classmethod
    def from_bert(cls, name_or_path: str | os.PathLike, **region_settings) -> "VLBertConfig":
        """The text sizes of a HF BERT config (hub name or directory), region settings from kwargs."""
        from transformers import AutoConfig

        bert = AutoConfig.from_pretrained(str(name_or_path)).to_dict()
        return cls(**{k: v for k, v in bert.items() if k in SETTING_NAMES}, **region_settings)
