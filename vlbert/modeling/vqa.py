"""VLBertForVQA: the encoder and an answer classifier over the answers in config.id2label,
trained with binary cross-entropy against soft scores (UNITER's recipe)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.utils import ModelOutput

from vlbert.errors import InputError, InputNotFound
from vlbert.modeling.config import VLBertConfig
from vlbert.modeling.heads import VQAHead
from vlbert.modeling.losses import vqa_loss
from vlbert.modeling.model import VLBertModel, VLBertPreTrainedModel

ANSWERS_FILE = "answers.json"  # the answer vocabulary with its counts, written beside config.json
INPUTS_FILE = "vqa.json"  # the input settings of fine-tuning (max_text_len, max_regions, object tags), for `vlbert answer`


@dataclass
class VQAOutput(ModelOutput):
    """loss (with targets): vqa_loss; logits [B, A] over config.id2label's answers."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


ANSWERS_FORMAT = "vlbert-vqa-answers"


def read_answers_file(path: str | os.PathLike) -> dict:
    """An answer vocabulary file as {"answers", "counts", "min_count", "count_by"}: a vlbert
    answers.json, a JSON list of answers, or an {answer: index} object (UNITER / LXMERT ans2label)."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"answer vocabulary {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"answer vocabulary {path} is not valid JSON: {err}") from None
    empty = {"counts": None, "min_count": None, "count_by": None}
    if isinstance(data, list):
        return {"answers": data, **empty}
    if isinstance(data, dict) and data.get("format") == ANSWERS_FORMAT:
        if not isinstance(data.get("answers"), list):
            raise InputError(f"answer vocabulary {path} has no 'answers' list")
        return {"answers": data["answers"], **{k: data.get(k) for k in empty}}
    if isinstance(data, dict) and all(isinstance(v, int) for v in data.values()):
        if sorted(data.values()) != list(range(len(data))):
            raise InputError(f"answer vocabulary {path}: the indices of an answer->index object must be 0..{len(data) - 1}")
        return {"answers": sorted(data, key=data.__getitem__), **empty}
    raise InputError(f"answer vocabulary {path} is neither a vlbert vocabulary, a JSON list of answers nor an {{answer: index}} object")


def answers_of(directory: str | os.PathLike) -> list[str] | None:
    """The answers of a model directory's answers.json, or None when it has none."""
    path = Path(directory) / ANSWERS_FILE
    return list(read_answers_file(path)["answers"]) if path.is_file() else None


def with_answers(config: VLBertConfig, answers: list[str]) -> VLBertConfig:
    """`config` with its labels set to `answers` (the VQA head's outputs, in order)."""
    config.id2label = dict(enumerate(answers))
    config.label2id = {answer: i for i, answer in enumerate(answers)}
    return config


class VLBertForVQA(VLBertPreTrainedModel):
    """The encoder and a VQA head (config.vqa_head_style) over config.id2label's answers."""

    def __init__(self, config: VLBertConfig) -> None:
        super().__init__(config)
        self.vlbert = VLBertModel(config)
        self.vqa_head = VQAHead(config, config.num_labels)
        self.post_init()

    @property
    def answers(self) -> list[str]:
        return [self.config.id2label[i] for i in range(self.config.num_labels)]

    def forward(
        self,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
        region_features: torch.Tensor,
        region_locations: torch.Tensor | None,
        region_mask: torch.Tensor,
        targets: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> VQAOutput:
        """Inputs as VLBertModel.forward (token_type_ids: with object tags); targets [B, A] soft scores in [0, 1]."""
        output = self.vlbert(input_ids, text_mask, region_features, region_locations, region_mask, token_type_ids=token_type_ids)
        logits = self.vqa_head(output.last_hidden_state, output.pooler_output, text_mask)
        return VQAOutput(loss=vqa_loss(logits, targets) if targets is not None else None, logits=logits)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "VLBertForVQA":
        """As transformers' from_pretrained; a directory exported before the answers moved into
        config.json (id2label) takes them from its answers.json."""
        directory = Path(str(pretrained_model_name_or_path))
        config_file = directory / "config.json"
        if config_file.is_file() and "id2label" not in json.loads(config_file.read_text()):
            answers = answers_of(directory)
            if answers is not None:
                config = kwargs.pop("config", None) or VLBertConfig.from_pretrained(directory)
                kwargs["config"] = with_answers(config, answers)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
