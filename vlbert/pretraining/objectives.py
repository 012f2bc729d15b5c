"""Pretraining objectives: which run, their weights and how they mix (the loss functions are in
vlbert.modeling.losses)."""
from __future__ import annotations

from dataclasses import dataclass

from vlbert.errors import InputError

TASKS = ("mlm", "mrfr", "mrc", "mrc_kl", "itm", "tag_contrastive")
REGION_TASKS = ("mrfr", "mrc", "mrc_kl")
# objectives computed on another task's examples rather than drawn as a task of their own
COMPANIONS = {"wra": "itm"}


@dataclass
class Objectives:
    """Which objectives run and how they mix.

    Weights: 0 switches an objective off. mixing="sample" draws one task per step with
    probability proportional to its weight (UNITER); mixing="sum" gives every example one
    role (ITM pair, text-masked or region-masked matched pair), drawn with the weights as
    ratios (the region objectives share the region role), and adds the weighted losses.

    tag_contrastive (Oscar's contrastive loss, with data.object_tags): the pooled output tells a
    caption + image whose tags are the image's own from one whose tags come from another image
    (drawn with tag_pollute_prob); with tags on, MLM masks tag tokens as well as words.

    WRA (word-region alignment, UNITER) is computed on the ITM pairs, wherever ITM runs, and added
    with its weight under either mixing, as UNITER adds 0.1 x its optimal-transport loss to ITM's.
    """

    mlm: float = 1.0  # masked language modelling
    mrfr: float = 1.0  # masked-region feature regression (L2 to the original feature)
    mrc: float = 0.0  # masked-region classification to the detector's top class
    mrc_kl: float = 1.0  # KL to the detector's class distribution
    itm: float = 1.0  # image-text matching
    tag_contrastive: float = 0.0  # clean vs polluted object tags (Oscar); needs data.object_tags
    wra: float = 0.0  # word-region alignment by optimal transport, on the ITM pairs (UNITER: 0.1)
    mixing: str = "sample"
    text_mask_prob: float = 0.15
    region_mask_prob: float = 0.15
    itm_negative_prob: float = 0.5
    tag_pollute_prob: float = 0.5  # tag_contrastive: how often the tags are another image's (Oscar: 0.5)

    def __post_init__(self) -> None:
        if self.mixing not in ("sample", "sum"):
            raise InputError(f"objectives.mixing must be 'sample' or 'sum', got {self.mixing!r}")
        if any(w < 0 for w in self.weights().values()):
            raise InputError(f"objective weights must be >= 0, got {self.weights()}")
        if not any(self.weights().values()):
            raise InputError("every objective weight is 0: enable at least one of " + ", ".join(TASKS))
        if self.wra < 0:
            raise InputError(f"objectives.wra must be >= 0, got {self.wra}")
        if self.wra > 0 and self.itm <= 0:
            raise InputError("objectives.wra > 0 aligns the words and regions of ITM pairs: set objectives.itm > 0 too")
        for name in ("text_mask_prob", "region_mask_prob", "itm_negative_prob", "tag_pollute_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"objectives.{name} must be in [0, 1]")

    def weights(self) -> dict[str, float]:
        return {task: float(getattr(self, task)) for task in TASKS}

    def enabled(self) -> list[str]:
        return [task for task, weight in self.weights().items() if weight > 0]

    def companions(self, tasks: tuple[str, ...]) -> tuple[str, ...]:
        """The companion objectives (WRA) that run alongside `tasks`."""
        return tuple(name for name, host in COMPANIONS.items() if getattr(self, name) > 0 and host in tasks)

    @property
    def needs_class_labels(self) -> bool:
        return self.mrc > 0

    @property
    def needs_class_probs(self) -> bool:
        return self.mrc_kl > 0

