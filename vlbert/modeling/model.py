"""The transformers-native models: the shared base, VLBertModel (the single-stream encoder) and
VLBertForPretraining (the encoder and every pretraining head). Task models are in vqa.py,
retrieval.py and caption.py; all of them save and load with `save_pretrained` / `from_pretrained` and, once
`vlbert` is imported, through `AutoModel` and the `AutoModelFor...` classes that fit."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from vlbert.modeling.config import VLBertConfig
from vlbert.modeling.embeddings import RegionEmbeddings, TextEmbeddings
from vlbert.modeling.encoder import Encoder, Pooler
from vlbert.modeling.optimal_transport import transport_distance, wra_loss
from vlbert.modeling.heads import ITMHead, MLMHead, RegionClassHead, RegionFeatureHead
from vlbert.modeling.losses import itm_loss, mlm_loss, mrc_kl_loss, mrc_loss, mrfr_loss

# Encoder weights a model directory may lack: the masked-region vector is used only in
# pretraining, and checkpoints converted from models without one (VisualBERT) start it new.
OPTIONAL_ENCODER_KEYS = ("region_embeddings.mask_embedding",)


class VLBertPreTrainedModel(PreTrainedModel):
    """What every vlbert model shares: its config class, the encoder's attribute name, and BERT's
    initialisation (normal(0, initializer_range) weights, zero biases, unit LayerNorms)."""

    config_class = VLBertConfig
    base_model_prefix = "vlbert"
    supports_gradient_checkpointing = True
    _keys_to_ignore_on_load_missing = [r"region_embeddings\.mask_embedding"]

    @torch.no_grad()
    def _init_weights(self, module: torch.nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, RegionEmbeddings):
            # unit scale per dimension, like a real feature (see RegionEmbeddings)
            init.normal_(module.mask_embedding, mean=0.0, std=1.0)
        elif isinstance(module, (MLMHead, RegionFeatureHead)):
            init.zeros_(module.bias)

    def use_object_tags(self, tag_type: int) -> bool:
        """Make room for object tags of token type `tag_type` (VLBertModel.grow_token_types); a model
        with a head for them adds it. Returns whether the model changed."""
        return self.base_model.grow_token_types(tag_type + 1)

    def _backward_compatibility_gradient_checkpointing(self) -> None:
        """config.gradient_checkpointing is a setting the encoder reads (and saved runs restore),
        not a legacy key to consume and delete as transformers does for its own models."""

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None) -> None:
        # gradient_checkpointing_enable() / _disable(): the encoder recomputes layers itself
        for module in self.modules():
            if isinstance(module, Encoder):
                module.gradient_checkpointing = enable
        self.config.gradient_checkpointing = enable


class VLBertModel(VLBertPreTrainedModel):
    """Text tokens and regions concatenated (text first) into one sequence, one attention mask
    over both paddings, a BERT encoder and a pooler."""

    def __init__(self, config: VLBertConfig) -> None:
        super().__init__(config)
        self.text_embeddings = TextEmbeddings(config)
        self.region_embeddings = RegionEmbeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config)
        self.post_init()

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.text_embeddings.word_embeddings

    def grow_token_types(self, count: int) -> bool:
        """Give the model `count` token types (object tags are type 2; a BERT checkpoint has 2). New
        types start as copies of type 0, the text's: a tag is a word to the model before it learns
        otherwise. Returns whether the model grew."""
        old = self.text_embeddings.token_type_embeddings
        if old.num_embeddings >= count:
            return False
        self.text_embeddings.token_type_embeddings = _grown(old, count)
        if hasattr(self.region_embeddings, "type_embeddings"):  # "visualbert" regions size theirs alike
            self.region_embeddings.type_embeddings = _grown(self.region_embeddings.type_embeddings, count)
        self.config.type_vocab_size = count
        return True

    def set_input_embeddings(self, value: torch.nn.Embedding) -> None:
        self.text_embeddings.word_embeddings = value

    def embed(
        self,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
        region_features: torch.Tensor,
        region_locations: torch.Tensor | None,
        region_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        region_masked: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The embedded sequence [B, T + R, H] and the SDPA mask: the key mask [B, 1, 1, T + R] (None
        when nothing is padded), or, given `attention_mask` [B, T + R, T + R] (query, key), that mask
        within the real keys as [B, 1, T + R, T + R], each position also attending to itself so that
        no row (a padded query's included) is empty."""
        if region_features.shape[-1] != self.config.region_feature_dim:
            raise ValueError(
                f"region features are {region_features.shape[-1]}-d but the model expects "
                f"region_feature_dim={self.config.region_feature_dim}"
            )
        if not self.config.region_location_dim:
            region_locations = None
        text = self.text_embeddings(input_ids, token_type_ids)
        regions = self.region_embeddings(region_features.to(text.dtype), region_locations, self.text_embeddings, region_masked)
        hidden = torch.cat([text, regions], dim=1)
        mask = torch.cat([text_mask, region_mask], dim=1).bool()
        if attention_mask is not None:
            length = mask.shape[1]
            if attention_mask.shape != (mask.shape[0], length, length):
                raise ValueError(f"attention_mask is {tuple(attention_mask.shape)}, expected [B, T + R, T + R] = "
                                 f"{[mask.shape[0], length, length]}")
            itself = torch.eye(length, dtype=torch.bool, device=mask.device)
            return hidden, ((attention_mask.bool() & mask[:, None, :]) | itself)[:, None]
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
        output_attentions: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPooling:
        """input_ids/text_mask [B, T]; region_features [B, R, D]; region_locations [B, R, 7];
        region_mask [B, R]. Masks are True where there is a real token / region; region_masked
        [B, R] is True where a region is masked for masked-region modelling. attention_mask
        [B, T + R, T + R] bool (query, key), optional: which positions each position may attend
        to besides the paddings' rule (captioning's seq2seq mask); without it every real position
        attends to every real position.

        Returns last_hidden_state [B, T + R, H] (text positions first, then regions; zeros at
        padded positions) and pooler_output [B, H]. With output_attentions, also `attentions`:
        per layer, first to last, the attention probabilities [B, heads, T + R, T + R] (query,
        key; float32, before attention dropout; zero at padded keys and padded queries),
        computed only when asked."""
        full_mask = attention_mask is not None
        hidden, attention_mask = self.embed(
            input_ids, text_mask, region_features, region_locations, region_mask, token_type_ids, region_masked, attention_mask
        )
        attentions = None
        if output_attentions:
            sequence_output, attentions = self.encoder(hidden, attention_mask, output_attentions=True)
        else:
            sequence_output = self.encoder(hidden, attention_mask)
        if full_mask:  # the padded path leaves padded positions unzeroed: zero them as the packed path does
            sequence_output = sequence_output * torch.cat([text_mask, region_mask], dim=1)[..., None].to(sequence_output.dtype)
        if output_attentions:
            return BaseModelOutputWithPooling(
                last_hidden_state=sequence_output, pooler_output=self.pooler(sequence_output), attentions=attentions
            )
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=self.pooler(sequence_output))


def _grown(embedding: torch.nn.Embedding, count: int) -> torch.nn.Embedding:
    """`embedding` with rows up to `count`, the new ones copies of row 0."""
    grown = torch.nn.Embedding(count, embedding.embedding_dim, device=embedding.weight.device, dtype=embedding.weight.dtype)
    with torch.no_grad():
        grown.weight[: embedding.num_embeddings] = embedding.weight
        grown.weight[embedding.num_embeddings:] = embedding.weight[0]
    return grown


@dataclass
class PretrainingTargets:
    """What a pretraining step predicts, as collate gives it: row indices into the flattened
    [B * (T + R)] hidden states (or [B] pooled outputs) with their targets. Row counts are known on
    the host, so no step waits on the device to learn how many targets there are.

    objectives: which losses to compute (those without targets in the batch are skipped);
    weights: each loss's weight in `loss` (default 1).
    """

    objectives: tuple[str, ...]
    weights: dict[str, float] = field(default_factory=dict)
    mlm_index: torch.Tensor | None = None  # [M] rows of masked tokens
    mlm_targets: torch.Tensor | None = None  # [M] their original token ids
    region_index: torch.Tensor | None = None  # [K] rows of masked regions
    region_targets: torch.Tensor | None = None  # [K, D] their original features (MRFR)
    region_labels: torch.Tensor | None = None  # [K] detector top class (MRC)
    region_probs: torch.Tensor | None = None  # [K, C] detector class distribution (MRC-KL)
    itm_index: torch.Tensor | None = None  # [P] examples with an ITM label
    itm_targets: torch.Tensor | None = None  # [P] 1 = matched
    tag_index: torch.Tensor | None = None  # [Q] examples with a tag_contrastive label
    tag_targets: torch.Tensor | None = None  # [Q] 1 = the image's own tags

    @classmethod
    def from_batch(cls, batch: dict, objectives: tuple[str, ...], weights: dict[str, float] | None = None) -> "PretrainingTargets":
        names = ("mlm_index", "mlm_targets", "region_index", "region_targets", "region_labels", "region_probs", "itm_index",
                 "itm_targets", "tag_index", "tag_targets")
        return cls(tuple(objectives), dict(weights or {}), **{name: batch.get(name) for name in names})

    @property
    def any_masked_region(self) -> bool:
        return self.region_index is not None and self.region_index.numel() > 0


@dataclass
class PretrainingOutput(ModelOutput):
    """loss: the weighted sum of `losses`; accuracies where an objective has one; the logits of
    the targets' rows only (mlm_logits [M, V], region_features [K, D], mrc_logits [K, C],
    itm_logits [P, 2], tag_logits [Q, 2]); wra_distances [P]: the word-region transport distance of
    each ITM pair."""

    loss: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] | None = None
    accuracies: dict[str, torch.Tensor] | None = None
    mlm_logits: torch.Tensor | None = None
    region_features: torch.Tensor | None = None
    mrc_logits: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None
    tag_logits: torch.Tensor | None = None
    wra_distances: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None


def word_positions(text_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The text mask [B, T] without [CLS] (position 0) and the text's closing [SEP]: the words WRA
    aligns. With token types, only the text's (type 0): object tags are not words of the caption."""
    words = text_mask.bool().clone()
    if token_type_ids is not None:
        words &= token_type_ids == 0
    last = words.long().sum(1).clamp(min=1) - 1  # the text is a prefix: its count ends at its [SEP]
    words[:, 0] = False
    words[torch.arange(len(words), device=words.device), last] = False
    return words


class VLBertForPretraining(VLBertPreTrainedModel):
    """The encoder with every pretraining head: MLM, MRFR, MRC / MRC-KL (when the config has region
    classes), ITM and Oscar's tag contrastive head (clean vs polluted object tags); WRA (optimal
    transport between the words and regions of ITM pairs) needs no head. Heads score only the rows
    the targets name."""

    def __init__(self, config: VLBertConfig) -> None:
        super().__init__(config)
        self.vlbert = VLBertModel(config)
        self.mlm_head = MLMHead(config, self.vlbert.text_embeddings)
        self.itm_head = ITMHead(config)
        self.mrfr_head = RegionFeatureHead(config, self.vlbert.region_embeddings)
        self.mrc_head = RegionClassHead(config) if config.num_region_classes else None
        # Oscar's clean / polluted tag classifier, in models with a token type for tags
        self.tag_head = ITMHead(config) if config.type_vocab_size > 2 else None
        self.post_init()

    def use_object_tags(self, tag_type: int) -> bool:
        grew = super().use_object_tags(tag_type)
        if self.tag_head is None:
            self.tag_head = ITMHead(self.config).to(self.itm_head.classifier.weight.device)
            self.tag_head.apply(self._init_weights)
            grew = True
        return grew

    def heads(self) -> list[torch.nn.Module]:
        return [head for head in (self.mlm_head, self.mrfr_head, self.mrc_head, self.itm_head, self.tag_head) if head is not None]

    def forward(
        self,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
        region_features: torch.Tensor,
        region_locations: torch.Tensor | None,
        region_mask: torch.Tensor,
        region_masked: torch.Tensor | None = None,
        targets: PretrainingTargets | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> PretrainingOutput:
        """Inputs as VLBertModel.forward; with `targets`, the loss of every objective they name."""
        masked = targets is not None and targets.any_masked_region
        output = self.vlbert(
            input_ids, text_mask, region_features, region_locations, region_mask, token_type_ids=token_type_ids,
            region_masked=region_masked if (masked or targets is None) else None,
        )
        result = PretrainingOutput(last_hidden_state=output.last_hidden_state, pooler_output=output.pooler_output)
        if targets is None:
            return result
        wanted = set(targets.objectives)
        rows = output.last_hidden_state.flatten(0, 1)  # [B * (T + R), H], what the indices address
        losses: dict[str, torch.Tensor] = {}
        accuracies: dict[str, torch.Tensor] = {}
        if "mlm" in wanted and targets.mlm_index is not None and targets.mlm_index.numel():
            result.mlm_logits = self.mlm_head(rows.index_select(0, targets.mlm_index))
            losses["mlm"], accuracies["mlm"] = mlm_loss(result.mlm_logits, targets.mlm_targets)
        if masked and wanted & {"mrfr", "mrc", "mrc_kl"}:
            hidden = rows.index_select(0, targets.region_index)
            if "mrfr" in wanted:
                result.region_features = self.mrfr_head(hidden)
                losses["mrfr"] = mrfr_loss(result.region_features, targets.region_targets)
            if wanted & {"mrc", "mrc_kl"}:
                if self.mrc_head is None:
                    raise ValueError("region classification needs config.num_region_classes > 0")
                result.mrc_logits = self.mrc_head(hidden)
                if "mrc" in wanted:
                    losses["mrc"], accuracies["mrc"] = mrc_loss(result.mrc_logits, targets.region_labels)
                if "mrc_kl" in wanted:
                    losses["mrc_kl"] = mrc_kl_loss(result.mrc_logits, targets.region_probs)
                    accuracies["mrc_kl"] = (result.mrc_logits.argmax(-1) == targets.region_probs.argmax(-1)).float().mean()
        if "itm" in wanted and targets.itm_index is not None and targets.itm_index.numel():
            result.itm_logits = self.itm_head(output.pooler_output.index_select(0, targets.itm_index))
            losses["itm"], accuracies["itm"] = itm_loss(result.itm_logits, targets.itm_targets)
        if "tag_contrastive" in wanted and targets.tag_index is not None and targets.tag_index.numel():
            if self.tag_head is None:
                raise ValueError("tag_contrastive needs the tag head: call use_object_tags first")
            result.tag_logits = self.tag_head(output.pooler_output.index_select(0, targets.tag_index))
            losses["tag_contrastive"], accuracies["tag_contrastive"] = itm_loss(result.tag_logits, targets.tag_targets)
        if "wra" in wanted and targets.itm_index is not None and targets.itm_index.numel():
            pairs = targets.itm_index
            hidden = output.last_hidden_state.index_select(0, pairs)
            text_length = input_ids.shape[1]
            result.wra_distances = transport_distance(
                hidden[:, :text_length], hidden[:, text_length:],
                word_positions(text_mask.index_select(0, pairs), None if token_type_ids is None else token_type_ids.index_select(0, pairs)),
                region_mask.index_select(0, pairs),
            )
            losses["wra"] = wra_loss(result.wra_distances, targets.itm_targets)
        result.losses, result.accuracies = losses, accuracies
        if losses:
            result.loss = sum(targets.weights.get(name, 1.0) * loss for name, loss in losses.items())
        return result
