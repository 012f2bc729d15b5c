"""VLBertForRetrieval: the encoder and the ITM head, scoring (image, caption) pairs."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from vlbert.modeling.config import VLBertConfig
from vlbert.modeling.heads import ITMHead
from vlbert.modeling.model import VLBertModel, VLBertPreTrainedModel


@dataclass
class RetrievalOutput(ModelOutput):
    """loss (with labels): ITM cross-entropy; logits [P, 2] (index 1 = matched); scores [P]: the
    log-odds of "matched", logits[:, 1] - logits[:, 0], which rank pairs as p(matched) does
    without the ties of a saturated softmax."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    scores: torch.Tensor | None = None


class VLBertForRetrieval(VLBertPreTrainedModel):
    """The encoder and the ITM head (the pretraining one: same weights, same names)."""

    def __init__(self, config: VLBertConfig) -> None:
        super().__init__(config)
        self.vlbert = VLBertModel(config)
        self.itm_head = ITMHead(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
        region_features: torch.Tensor,
        region_locations: torch.Tensor | None,
        region_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> RetrievalOutput:
        """One row per (caption, image) pair, inputs as VLBertModel.forward; labels [P] 1 = matched."""
        pooled = self.vlbert(input_ids, text_mask, region_features, region_locations, region_mask).pooler_output
        logits = self.itm_head(pooled).float()
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return RetrievalOutput(loss=loss, logits=logits, scores=logits[:, 1] - logits[:, 0])
