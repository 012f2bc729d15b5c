"""The VQA model: the encoder's pooled output -> an MLP answer classifier, trained with BCE
against soft scores (UNITER's recipe), and model directories that carry the answer vocabulary.

A fine-tuned VQA model directory is a vlbert model directory (config.json, model.safetensors
with "vlbert.*" and "vqa_head.*" keys, tokenizer, features.json) plus ``answers.json``.
UNITER VQA checkpoints converted with ``vlbert convert`` have the same head keys and load as is.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vlbert.modeling.config import VLBertConfig
from vlbert.modeling.model import VLBertModel, init_weights
from vlbert.modeling.pretrained import load_complete_state, load_pretrained, save_pretrained
from vlbert.tasks.vqa.answers import AnswerVocab

ANSWERS_FILE = "answers.json"
INPUTS_FILE = "vqa.json"  # the input settings of fine-tuning (max_text_len, max_regions), for `vlbert answer`


class VQAHead(nn.Module):
    """pooled_output [B, H] -> answer logits [B, A]: Linear(H, 2H) -> GELU -> LayerNorm -> Linear(2H, A).
    Parameter names match UNITER's converted ``vqa_output`` (dense, LayerNorm, classifier)."""

    def __init__(self, config: VLBertConfig, num_answers: int) -> None:
        super().__init__()
        if num_answers < 1:
            raise ValueError(f"a VQA head needs at least one answer, got {num_answers}")
        hidden = config.hidden_size
        self.dense = nn.Linear(hidden, 2 * hidden)
        self.LayerNorm = nn.LayerNorm(2 * hidden, eps=config.layer_norm_eps)
        self.classifier = nn.Linear(2 * hidden, num_answers)
        self.apply(lambda m: init_weights(m, config.initializer_range))

    def forward(self, pooled_output: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.LayerNorm(F.gelu(self.dense(pooled_output))))


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of logits [B, A] against soft scores [B, A] in [0, 1], summed over
    answers and averaged over questions (UNITER: mean over all entries times A), so the loss
    scale does not shrink as the vocabulary grows."""
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float()) * logits.shape[1]


class VLBertForVQA(nn.Module):
    """The encoder and a VQA head over a fixed answer vocabulary."""

    def __init__(self, config: VLBertConfig, vocab: AnswerVocab) -> None:
        super().__init__()
        self.config = config
        self.vocab = vocab
        self.vlbert = VLBertModel(config)
        self.vqa_head = VQAHead(config, len(vocab))

    def forward(
        self,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
        region_features: torch.Tensor,
        region_locations: torch.Tensor | None,
        region_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Answer logits [B, A] (see VLBertModel.forward for the input shapes)."""
        output = self.vlbert(input_ids, text_mask, region_features, region_locations, region_mask)
        return self.vqa_head(output.pooled_output)

    def save_pretrained(self, directory: str | os.PathLike, tokenizer=None, features_header: dict | None = None,
                        inputs: dict | None = None) -> Path:
        return save_vqa_directory(directory, self, tokenizer, features_header, inputs)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "VLBertForVQA":
        """A fine-tuned VQA model directory (encoder, head and answers.json)."""
        directory = Path(directory)
        config, state = load_pretrained(directory)
        if not any(k.startswith("vqa_head.") for k in state):
            raise ValueError(f"{directory} has no VQA head (no vqa_head.* weights); fine-tune one with `vlbert vqa fit`")
        check_head_style(directory)
        vocab = read_answers(directory)
        model = cls(config, vocab)
        load_complete_state(model, state, "", directory)
        return model


def save_vqa_directory(directory: str | os.PathLike, module: nn.Module, tokenizer=None,
                       features_header: dict | None = None, inputs: dict | None = None) -> Path:
    """Write a VQA model directory from any module with ``vlbert``, ``vqa_head``, ``config``, ``vocab``."""
    extra = {ANSWERS_FILE: module.vocab.to_dict()}
    if inputs:
        extra[INPUTS_FILE] = {k: inputs[k] for k in ("max_text_len", "max_regions") if k in inputs}
    return save_pretrained(directory, module, module.config, tokenizer, features_header, extra)


def read_answers(directory: str | os.PathLike) -> AnswerVocab:
    """The answers.json of a model directory, with a clear error when it is absent."""
    path = Path(directory) / ANSWERS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: a VQA model directory stores its answer vocabulary there "
            "(for a converted checkpoint, pass --answers to `vlbert convert`)"
        )
    return AnswerVocab.load(path)


def check_head_style(directory: str | os.PathLike) -> None:
    """Converted VisualBERT VQA heads read a text token, not the pooled output: not this head."""
    conversion = Path(directory) / "conversion.json"
    if conversion.is_file():
        style = (json.loads(conversion.read_text()).get("vqa_head") or {}).get("style")
        if style not in (None, "pooled_mlp"):
            raise ValueError(
                f"{directory} holds a {style!r} VQA head (VisualBERT's classifier on a text token), not the "
                "pooled-output MLP vlbert fine-tunes; use its encoder (vlbert vqa fit --model.init_from DIR "
                "--model.load_head false) to fine-tune a new head"
            )


def head_state_of(directory: str | os.PathLike, state: dict[str, torch.Tensor]) -> tuple[AnswerVocab | None, dict[str, torch.Tensor]]:
    """The answer vocabulary and "vqa_head.*" weights of a model directory, or (None, {}) when it
    has no usable VQA head (a pretrained encoder, or a head of another style)."""
    head = {k: v for k, v in state.items() if k.startswith("vqa_head.")}
    if not head or not (Path(directory) / ANSWERS_FILE).is_file():
        return None, {}
    try:
        check_head_style(directory)
    except ValueError:
        return None, {}
    return read_answers(directory), head
