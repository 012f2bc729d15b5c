"""VLBertModel (the single-stream encoder) and VLBertForPretraining (encoder + pretraining heads)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from vlbert.modeling.config import VLBertConfig
from vlbert.modeling.embeddings import RegionEmbeddings, TextEmbeddings
from vlbert.modeling.encoder import Encoder, Pooler
from vlbert.modeling.heads import ITMHead, MLMHead, RegionClassHead, RegionFeatureHead
from vlbert.modeling.pretrained import load_pretrained, load_submodule_state, save_pretrained

log = logging.getLogger(__name__)

# Encoder weights a model directory may lack: the masked-region vector is used only in
# pretraining, and checkpoints converted from models without one (VisualBERT) start it new.
OPTIONAL_ENCODER_KEYS = ("region_embeddings.mask_embedding",)


def load_encoder_state(encoder: nn.Module, state: dict[str, torch.Tensor], source) -> None:
    """Load a model directory's "vlbert.*" weights into `encoder` (a VLBertModel); every encoder
    weight but the optional ones must be there, and nothing unexpected."""
    missing = [k for k in load_submodule_state(encoder, state, "vlbert.", strict=True) if k not in OPTIONAL_ENCODER_KEYS]
    if missing:
        raise ValueError(f"{source} lacks encoder weights {missing[:10]}")


@dataclass
class VLBertOutput:
    sequence_output: torch.Tensor  # [B, T + R, H]: text positions first, then regions
    pooled_output: torch.Tensor  # [B, H]


def init_weights(module: nn.Module, initializer_range: float) -> None:
    """BERT's initialisation: normal(0, 0.02) weights, zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class VLBertModel(nn.Module):
    """Text tokens and regions concatenated (text first) into one sequence, one attention mask
    over both paddings, a BERT encoder and a pooler."""

    def __init__(self, config: VLBertConfig) -> None:
        super().__init__()
        self.config = config
        self.text_embeddings = TextEmbeddings(config)
        self.region_embeddings = RegionEmbeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config)
        self.apply(lambda m: init_weights(m, config.initializer_range))

    def embed(
        self,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
        region_features: torch.Tensor,
        region_locations: torch.Tensor | None,
        region_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        region_masked: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The embedded sequence [B, T + R, H] and the SDPA key mask [B, 1, 1, T + R] (None when nothing is padded)."""
        if region_features.shape[-1] != self.config.region_feature_dim:
            raise ValueError(
                f"region features are {region_features.shape[-1]}-d but the model expects "
                f"region_feature_dim={self.config.region_feature_dim}"
            )
        text = self.text_embeddings(input_ids, token_type_ids)
        regions = self.region_embeddings(region_features.to(text.dtype), region_locations, self.text_embeddings, region_masked)
        hidden = torch.cat([text, regions], dim=1)
        mask = torch.cat([text_mask, region_mask], dim=1).bool()
        # An all-valid mask is dropped so SDPA may take its fastest unmasked kernel.
        attention_mask = None if bool(mask.all()) else mask[:, None, None, :]
        return hidden, attention_mask

    def forward(
        self,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
        region_features: torch.Tensor,
        region_locations: torch.Tensor | None,
        region_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        region_masked: torch.Tensor | None = None,
    ) -> VLBertOutput:
        """input_ids/text_mask [B, T]; region_features [B, R, D]; region_locations [B, R, 7];
        region_mask [B, R]. Masks are True where there is a real token / region; region_masked
        [B, R] is True where a region is masked for masked-region modelling."""
        hidden, attention_mask = self.embed(
            input_ids, text_mask, region_features, region_locations, region_mask, token_type_ids, region_masked
        )
        sequence_output = self.encoder(hidden, attention_mask)
        return VLBertOutput(sequence_output, self.pooler(sequence_output))

    @classmethod
    def from_pretrained(cls, directory) -> "VLBertModel":
        """The encoder of a model directory (its "vlbert.*" weights); heads are ignored."""
        config, state = load_pretrained(directory)
        model = cls(config)
        load_encoder_state(model, state, directory)
        return model


class VLBertForPretraining(nn.Module):
    """The encoder with every pretraining head. Heads score only the positions they are given."""

    def __init__(self, config: VLBertConfig) -> None:
        super().__init__()
        self.config = config
        self.vlbert = VLBertModel(config)
        self.mlm_head = MLMHead(config, self.vlbert.text_embeddings.word_embeddings)
        self.itm_head = ITMHead(config)
        self.mrfr_head = RegionFeatureHead(config, self.vlbert.region_embeddings.feature_proj)
        self.mrc_head = RegionClassHead(config) if config.num_region_classes else None
        for head in (self.mlm_head, self.itm_head, self.mrfr_head, self.mrc_head):
            if head is not None:
                head.apply(lambda m: init_weights(m, config.initializer_range))

    def forward(self, **batch: torch.Tensor) -> VLBertOutput:
        return self.vlbert(**batch)

    def save_pretrained(self, directory, tokenizer=None, features_header: dict | None = None):
        return save_pretrained(directory, self, self.config, tokenizer, features_header)

    @classmethod
    def from_pretrained(cls, directory) -> "VLBertForPretraining":
        """The encoder must be complete; pretraining heads load where the directory has them and
        start new where it does not (e.g. a converted VisualBERT has no region heads); weights of
        other heads (a task's) are left out. Both are logged."""
        config, state = load_pretrained(directory)
        model = cls(config)
        load_encoder_state(model.vlbert, state, directory)
        new_heads = []
        for name in ("mlm_head", "itm_head", "mrfr_head", "mrc_head"):
            head = getattr(model, name)
            if head is not None and load_submodule_state(head, state, name + ".", strict=True):
                new_heads.append(name)
        ignored = sorted({k.split(".")[0] for k in state} - {"vlbert", "mlm_head", "itm_head", "mrfr_head", "mrc_head"})
        if new_heads or ignored:
            log.warning("%s: heads initialised new: %s; weights not used: %s", directory, new_heads or "none", ignored or "none")
        return model
