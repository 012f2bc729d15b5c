"""Box selection of the bottom-up-attention recipe, as pure functions on tensors.

Every proposal of the detector is a candidate region. For each foreground class, NMS runs
over all proposals scored by that class; a proposal's confidence is its best class score
among the classes in which it survived NMS (0 if it survived in none). Then either

* adaptive: keep proposals whose confidence is at least ``score_threshold``, but at least
  ``min_boxes`` and at most ``max_boxes`` of them (the most confident ones), or
* fixed: keep exactly the ``num_boxes`` most confident proposals (fewer only when the
  detector proposed fewer).

When fewer than ``min_boxes`` (or ``num_boxes``) proposals survive NMS in some class, the rest
are filled with the top-scoring other proposals, as bottom-up-attention does (if fewer than
MIN_BOXES pass the threshold, it takes the top MIN_BOXES by confidence): proposals suppressed in
every class have confidence 0, and among them the higher best class score (before NMS) comes
first, so the fill is the proposals the classifier rates highest, not the RPN's order.

The kept proposals come back most confident first. The stored box is the proposal on
which the feature was pooled, so box and feature always describe the same region.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms


@dataclass(frozen=True)
class BoxSelection:
    """How many regions to keep per image. ``num_boxes`` set -> fixed K, else adaptive."""

    score_threshold: float = 0.2
    nms_iou: float = 0.3
    min_boxes: int = 10
    max_boxes: int = 100
    num_boxes: int | None = None

    def __post_init__(self) -> None:
        if self.num_boxes is not None and self.num_boxes < 1:
            raise ValueError(f"num_boxes must be >= 1 (or null for adaptive selection), got {self.num_boxes}")
        if self.min_boxes < 0 or self.max_boxes < 1 or self.min_boxes > self.max_boxes:
            raise ValueError(
                f"need 0 <= min_boxes <= max_boxes and max_boxes >= 1, got min_boxes={self.min_boxes}, "
                f"max_boxes={self.max_boxes}"
            )
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou}")


def per_class_nms_confidence(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """Confidence of each proposal after per-class NMS.

    boxes [K, 4] (x1 y1 x2 y2, shared by all classes), scores [K, C] (foreground classes
    only) -> [K]: max over the classes in which the proposal survived NMS of its score,
    0 where it survived in none.
    """
    num_proposals, num_classes = scores.shape
    confidence = scores.new_zeros(num_proposals)
    if num_proposals == 0 or num_classes == 0:
        return confidence
    flat_scores = scores.reshape(-1)  # proposal-major: index = k * C + c
    flat_boxes = boxes.repeat_interleave(num_classes, dim=0)
    classes = torch.arange(num_classes, device=scores.device).repeat(num_proposals)
    keep = batched_nms(flat_boxes.float(), flat_scores.float(), classes, iou)
    proposal = keep // num_classes
    return confidence.scatter_reduce(0, proposal, flat_scores[keep], reduce="amax", include_self=True)


def ranking(confidence: torch.Tensor, tie_break: torch.Tensor | None = None) -> torch.Tensor:
    """Proposal indices by confidence [K], highest first; equal confidences (the zeros of proposals
    suppressed everywhere) ordered by `tie_break` [K] (higher first), then by index."""
    if tie_break is None:
        return torch.sort(confidence, descending=True, stable=True).indices
    order = torch.sort(tie_break, descending=True, stable=True).indices
    return order[torch.sort(confidence[order], descending=True, stable=True).indices]


def select_from_confidence(confidence: torch.Tensor, selection: BoxSelection,
                           tie_break: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of kept proposals, most confident first. confidence [K] (tie_break [K], see
    `ranking`) -> [N] int64; N < min_boxes only when K < min_boxes."""
    order = ranking(confidence, tie_break)
    if selection.num_boxes is not None:
        return order[: selection.num_boxes]
    above = int((confidence >= selection.score_threshold).sum())
    count = min(max(above, selection.min_boxes), selection.max_boxes)
    return order[:count]


def select_boxes(boxes: torch.Tensor, scores: torch.Tensor, selection: BoxSelection) -> torch.Tensor:
    """Bottom-up-attention selection. boxes [K, 4], scores [K, C] foreground -> kept indices [N]."""
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [K, 4], got {tuple(boxes.shape)}")
    if scores.ndim != 2 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"scores must be [K, C] with K={boxes.shape[0]}, got {tuple(scores.shape)}")
    confidence = per_class_nms_confidence(boxes, scores, selection.nms_iou)
    best_score = scores.max(-1).values if scores.shape[1] else None  # fills up to min_boxes
    return select_from_confidence(confidence, selection, best_score)
