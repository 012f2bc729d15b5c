"""VLBertForCaptioning: the encoder under a sequence-to-sequence attention mask and the MLM head
(tied to the word embeddings), fine-tuned to write captions as Oscar / VLP do.

The single stream is text first, then regions. Under the seq2seq mask regions attend to regions
only, and caption token t to the regions and to caption tokens 0..t, so a caption position never
sees the words after it and the image's states do not depend on the caption at all.

Two objectives (config.caption_objective), each with its decoding rule:
  "masked"      Oscar / VLP: some caption tokens (the final [SEP] included) are replaced as in BERT
                and predicted at their own position; decoding appends a [MASK] to the prefix and
                reads the word predicted there. The head is the pretraining MLM head, so it starts
                from what pretraining learned.
  "next_token"  teacher forcing: the state of token t predicts token t + 1, at every position;
                decoding reads the last position of the prefix.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from vlbert.modeling.config import VLBertConfig
from vlbert.modeling.heads import MLMHead
from vlbert.modeling.losses import mlm_loss
from vlbert.modeling.model import VLBertModel, VLBertPreTrainedModel

CAPTION_OBJECTIVES = ("masked", "next_token")
IGNORE_INDEX = -100  # labels at positions nothing is predicted for
CAPTION_INPUTS_FILE = "caption.json"  # fine-tuning's input and decoding settings, beside config.json


def caption_objective(config: VLBertConfig) -> str:
    """The config's captioning objective ("masked" for a config that names none)."""
    objective = getattr(config, "caption_objective", "masked")
    if objective not in CAPTION_OBJECTIVES:
        raise ValueError(f"caption_objective must be one of {CAPTION_OBJECTIVES}, got {objective!r}")
    return objective


def seq2seq_mask(text_mask: torch.Tensor, region_mask: torch.Tensor) -> torch.Tensor:
    """[B, T + R, T + R] bool (query, key), text first: text query t attends to real text keys
    0..t and to real regions; a region query to real regions only."""
    batch, text, regions = text_mask.shape[0], text_mask.shape[1], region_mask.shape[1]
    text_keys = text_mask.bool()[:, None, :] & torch.ones(text, text, dtype=torch.bool, device=text_mask.device).tril()
    region_keys = region_mask.bool()[:, None, :]
    top = torch.cat([text_keys, region_keys.expand(batch, text, regions)], dim=2)
    bottom = torch.cat([text_keys.new_zeros(batch, regions, text), region_keys.expand(batch, regions, regions)], dim=2)
    return torch.cat([top, bottom], dim=1)


@dataclass
class CaptionOutput(ModelOutput):
    """loss (with labels): mean cross-entropy over the scored positions; accuracy: of their top
    token. logits: with labels [M, V] at the scored positions (row-major); with positions [B, V];
    otherwise [B, T, V] at every text position."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    accuracy: torch.Tensor | None = None


class VLBertForCaptioning(VLBertPreTrainedModel):
    """The encoder (seq2seq mask) and the MLM head as the caption word predictor. Its head keeps
    the pretraining name, `mlm_head`, so a pretrained model's head is loaded with the encoder."""

    def __init__(self, config: VLBertConfig) -> None:
        super().__init__(config)
        caption_objective(config)
        self.vlbert = VLBertModel(config)
        self.mlm_head = MLMHead(config, self.vlbert.text_embeddings)
        self.post_init()

    @property
    def objective(self) -> str:
        return caption_objective(self.config)

    def forward(
        self,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
        region_features: torch.Tensor,
        region_locations: torch.Tensor | None,
        region_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> CaptionOutput:
        """Inputs as VLBertModel.forward (input_ids: the caption, [CLS] first). labels [B, T]: the
        token each text position predicts, IGNORE_INDEX where none (what the objective asks:
        the original of a masked token, or the next token). positions [B]: score one text
        position per row (decoding)."""
        mask = seq2seq_mask(text_mask, region_mask)
        hidden = self.vlbert(input_ids, text_mask, region_features, region_locations, region_mask, attention_mask=mask)
        text = hidden.last_hidden_state[:, : input_ids.shape[1]]
        if labels is not None:
            scored = labels != IGNORE_INDEX
            logits = self.mlm_head(text[scored])
            loss, accuracy = mlm_loss(logits, labels[scored])
            return CaptionOutput(loss=loss, logits=logits, accuracy=accuracy)
        if positions is not None:
            text = text[torch.arange(len(text), device=text.device), positions]
        return CaptionOutput(logits=self.mlm_head(text))
