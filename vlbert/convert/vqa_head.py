"""VQA answer heads of converted checkpoints, stored as "vqa_head.*" in a vlbert model directory.

The two source systems read different inputs, and both are kept exactly (VQAHead's two styles):
  "pooled_mlp"   (UNITER vqa_output): pooled output -> dense(H, 2H) -> GELU -> LayerNorm(2H) -> classifier(2H, A)
                 keys vqa_head.dense.*, vqa_head.LayerNorm.*, vqa_head.classifier.*
  "token_linear" (VisualBertForQuestionAnswering.cls): hidden state of text token (text length - 2),
                 i.e. the token before the final [SEP] -> classifier(H, A); keys vqa_head.classifier.*
The style goes into config.json (vqa_head_style) and, with the answer count, into conversion.json.
"""
from __future__ import annotations

import torch

from vlbert.convert.state import ConversionError, SourceState
from vlbert.modeling.config import VLBertConfig
from vlbert.modeling.heads import VQAHead

UNITER_VQA = {
    "vqa_output.0.weight": "vqa_head.dense.weight",
    "vqa_output.0.bias": "vqa_head.dense.bias",
    "vqa_output.2.weight": "vqa_head.LayerNorm.weight",
    "vqa_output.2.bias": "vqa_head.LayerNorm.bias",
    "vqa_output.3.weight": "vqa_head.classifier.weight",
    "vqa_output.3.bias": "vqa_head.classifier.bias",
}
VISUALBERT_QA = {"cls.weight": "vqa_head.classifier.weight", "cls.bias": "vqa_head.classifier.bias"}


def head_from_state(config: VLBertConfig, state: dict[str, torch.Tensor], style: str) -> VQAHead:
    """The head of the given style sized from the "vqa_head.classifier.weight" in `state`."""
    config.vqa_head_style = style
    return VQAHead(config, state["vqa_head.classifier.weight"].shape[0])


def visualbert_qa_to_vlbert(source: SourceState, config: VLBertConfig) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    out = {dst: source.take(src) for src, dst in VISUALBERT_QA.items()}
    return out, {dst: src for src, dst in VISUALBERT_QA.items()}


def uniter_heads_to_vlbert(
    source: SourceState, config: VLBertConfig
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """UNITER's fine-tuned VQA head (vqa_output.*) when present. Its retrieval `rank_output`
    (Linear(H, 1), initialised from itm_output row 1) has no vlbert place and stays listed."""
    present = [src for src in UNITER_VQA if source.has(src)]
    if not present:
        return {}, {}, []
    if len(present) < len(UNITER_VQA):
        raise ConversionError(f"{source.name}: the VQA head is incomplete, it lacks {sorted(set(UNITER_VQA) - set(present))}")
    out = {dst: source.take(src) for src, dst in UNITER_VQA.items()}
    hidden = config.hidden_size
    if tuple(out["vqa_head.dense.weight"].shape) != (2 * hidden, hidden):
        raise ConversionError(f"{source.name}: vqa_output.0.weight is {tuple(out['vqa_head.dense.weight'].shape)}, expected {(2 * hidden, hidden)}")
    notes = [f"VQA head: UNITER's MLP on the pooled output, {out['vqa_head.classifier.weight'].shape[0]} answers"]
    return out, {dst: src for src, dst in UNITER_VQA.items()}, notes


def vlbert_vqa_to_visualbert_qa(state: dict[str, torch.Tensor], style: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The "cls.*" tensors of VisualBertForQuestionAnswering from a token_linear vqa_head."""
    if style != "token_linear":
        raise ConversionError(
            f"the model's VQA head is {style!r} (an MLP on the pooled output); VisualBertForQuestionAnswering "
            "has a single linear layer on the token before [SEP]; convert with --head pretraining or --head none"
        )
    return {src: state[dst] for src, dst in VISUALBERT_QA.items()}, list(VISUALBERT_QA.values())
