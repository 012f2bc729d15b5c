"""transformers VisualBERT <-> vlbert.

VisualBERT's embeddings are exactly vlbert's region_embedding="visualbert" with
region_location_dim=0: text word + position + type; regions W f + visual type embedding 1 +
visual position embedding 0 (no box input); one LayerNorm over both. Its encoder and pooler are
BERT's. Heads: VisualBertForPreTraining's MLM (tied decoder) and sentence-image head, whose
class 0 means "matched" (BERT's next-sentence convention) while vlbert's ITM head uses index 1,
so the two rows are swapped on the way in and back out.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from vlbert.convert.bert_layers import bert_encoder_to_vlbert, count_layers, vlbert_encoder_to_bert
from vlbert.convert.state import ConversionError, ConversionReport, Converted, SourceState, require_tied
from vlbert.modeling.config import VLBertConfig

ARCHITECTURES = ("VisualBertModel", "VisualBertForPreTraining", "VisualBertForQuestionAnswering")

# VisualBERT "embeddings.*" -> vlbert VLBertModel keys.
EMBEDDINGS = {
    "embeddings.word_embeddings.weight": "text_embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight": "text_embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight": "text_embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight": "text_embeddings.LayerNorm.weight",
    "embeddings.LayerNorm.bias": "text_embeddings.LayerNorm.bias",
    "embeddings.visual_projection.weight": "region_embeddings.feature_proj.weight",
    "embeddings.visual_projection.bias": "region_embeddings.feature_proj.bias",
    "embeddings.visual_token_type_embeddings.weight": "region_embeddings.type_embeddings.weight",
    "embeddings.visual_position_embeddings.weight": "region_embeddings.position_embeddings.weight",
}
# VisualBertForPreTraining's MLM head -> vlbert keys (the decoder is tied and carries no tensor).
MLM_HEAD = {
    "cls.predictions.transform.dense.weight": "mlm_head.transform.dense.weight",
    "cls.predictions.transform.dense.bias": "mlm_head.transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight": "mlm_head.transform.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias": "mlm_head.transform.LayerNorm.bias",
    "cls.predictions.bias": "mlm_head.bias",
}
ITM_HEAD = {
    "cls.seq_relationship.weight": "itm_head.classifier.weight",
    "cls.seq_relationship.bias": "itm_head.classifier.bias",
}
# The sizes a VisualBertConfig shares with VLBertConfig under the same names.
SHARED_CONFIG = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
    "layer_norm_eps", "initializer_range",
)
SUPPORTED_ACTS = ("gelu", "gelu_new", "relu", "gelu_pytorch_tanh")


# -- reading a transformers directory ---------------------------------------------------


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The state dict of a transformers save_pretrained directory: safetensors or PyTorch
    (weights_only), single file or sharded."""
    from safetensors.torch import load_file

    for single, index, load in (
        ("model.safetensors", "model.safetensors.index.json", lambda p: load_file(str(p))),
        ("pytorch_model.bin", "pytorch_model.bin.index.json",
         lambda p: torch.load(p, map_location="cpu", weights_only=True)),
    ):
        if (directory / single).exists():
            return dict(load(directory / single))
        if (directory / index).exists():
            shards = sorted(set(json.loads((directory / index).read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(load(directory / shard))
            return state
    raise ConversionError(f"{directory} holds no model.safetensors or pytorch_model.bin (nor a sharded index)")


def read_visualbert_directory(src: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], str]:
    """(config.json as a dict, state dict, architecture) of a VisualBERT save_pretrained directory."""
    path = Path(src)
    if not path.is_dir():
        raise ConversionError(f"{path} is not a directory; --from visualbert expects a transformers save_pretrained directory")
    config_path = path / "config.json"
    if not config_path.exists():
        raise ConversionError(f"{config_path} not found; is {path} a transformers VisualBERT directory?")
    hf_config = json.loads(config_path.read_text())
    if hf_config.get("model_type") != "visual_bert":
        raise ConversionError(
            f"{config_path} has model_type {hf_config.get('model_type')!r}, not 'visual_bert'"
            + ("; it is a vlbert directory: use --from vlbert" if hf_config.get("model_type") == "vlbert" else "")
        )
    state = read_hf_weights(path)
    architectures = hf_config.get("architectures") or []
    if architectures:
        architecture = architectures[0]
    elif not any(key.startswith("visual_bert.") for key in state):
        architecture = "VisualBertModel"
    elif any(key.startswith("cls.predictions.") for key in state):
        architecture = "VisualBertForPreTraining"
    else:
        raise ConversionError(f"{config_path} names no architecture and the heads cannot be told apart; add \"architectures\"")
    if architecture not in ARCHITECTURES:
        raise ConversionError(f"{path} is a {architecture}; vlbert converts {', '.join(ARCHITECTURES)}")
    return hf_config, state, architecture


def vlbert_config_from_visualbert(hf_config: dict, pad_token_id: int = 0) -> VLBertConfig:
    """The VLBertConfig that computes exactly what this VisualBertConfig computes."""
    if hf_config.get("bypass_transformer"):
        raise ConversionError("bypass_transformer=True VisualBERT models (an extra layer after a text-only encoder) have no vlbert equivalent")
    act = hf_config.get("hidden_act", "gelu")
    if act not in SUPPORTED_ACTS:
        raise ConversionError(f"hidden_act {act!r} is not one vlbert implements ({', '.join(SUPPORTED_ACTS)})")
    values = {name: hf_config[name] for name in SHARED_CONFIG if name in hf_config}
    return VLBertConfig(
        **values,
        pad_token_id=pad_token_id,
        region_feature_dim=hf_config.get("visual_embedding_dim", 512),
        region_location_dim=0,
        region_embedding="visualbert",
        num_region_classes=0,
    )


def visualbert_to_vlbert(
    hf_config: dict, hf_state: dict[str, torch.Tensor], architecture: str, source: str, pad_token_id: int = 0
) -> Converted:
    """A VisualBERT checkpoint in vlbert terms. VisualBertForQuestionAnswering's classifier reads
    the hidden state of the token before the final [SEP], not the pooled output; it becomes a
    "token_linear" vqa_head (see vqa_head.py)."""
    config = vlbert_config_from_visualbert(hf_config, pad_token_id)
    source_state = SourceState(hf_state, source)
    prefix = "" if architecture == "VisualBertModel" else "visual_bert."
    if not source_state.has(prefix + "embeddings.word_embeddings.weight"):
        raise ConversionError(f"{source}: no {prefix}embeddings.word_embeddings.weight; is it a {architecture} checkpoint?")
    for key in list(hf_state):
        if key.endswith("position_ids"):
            source_state.skip(key, "buffer (positions are 0..T-1), not a weight")
    layers = count_layers(hf_state, prefix + "encoder.layer.")
    if layers != config.num_hidden_layers:
        raise ConversionError(f"{source}: config.json says num_hidden_layers={config.num_hidden_layers} but the weights hold {layers} layers")
    state, origin = {}, {}
    for src, dst in EMBEDDINGS.items():
        state["vlbert." + dst] = source_state.take(prefix + src)
        origin["vlbert." + dst] = prefix + src
    encoder, encoder_origin = bert_encoder_to_vlbert(source_state, prefix, layers)
    state.update({"vlbert." + k: v for k, v in encoder.items()})
    origin.update({"vlbert." + k: v for k, v in encoder_origin.items()})
    report = ConversionReport(source, f"visualbert ({architecture})", "vlbert")
    if architecture == "VisualBertForPreTraining":
        for src, dst in MLM_HEAD.items():
            state[dst], origin[dst] = source_state.take(src), src
        require_tied(source_state, "cls.predictions.decoder.weight", prefix + "embeddings.word_embeddings.weight")
        require_tied(source_state, "cls.predictions.decoder.bias", "cls.predictions.bias")
        for src, dst in ITM_HEAD.items():
            state[dst], origin[dst] = source_state.take(src).flip(0).contiguous(), src + " (rows swapped)"
        report.notes.append(
            "sentence-image head: VisualBERT class 0 = matched, vlbert itm_head index 1 = matched; rows swapped, "
            "so vlbert itm logits = VisualBERT seq_relationship logits[:, ::-1]"
        )
    if architecture == "VisualBertForQuestionAnswering":
        from vlbert.convert.vqa_head import visualbert_qa_to_vlbert

        head, head_origin = visualbert_qa_to_vlbert(source_state, config)
        state.update(head)
        origin.update(head_origin)
        report.vqa_head = {"style": "token_linear", "num_answers": int(head["vqa_head.classifier.weight"].shape[0])}
        report.notes.append("VQA head: VisualBERT's classifier on the token before the last [SEP] (text length - 2)")
    report.converted = dict(origin)
    report.unconverted = {key: "unknown key" for key in source_state.leftover()}
    report.skipped = dict(source_state.skipped)
    report.notes.append("regions use visual position id 0 (VisualBERT's default; image_text_alignment is not supported)")
    return Converted(config, state, origin, report)


# -- writing a transformers directory ---------------------------------------------------


def check_visualbert_compatible(config: VLBertConfig) -> None:
    """Refuse, saying why, a vlbert configuration VisualBERT's architecture cannot express."""
    reasons = []
    if config.region_embedding != "visualbert":
        reasons.append(
            f"region_embedding={config.region_embedding!r}: VisualBERT adds its own visual type and position "
            "embeddings and has no separate region LayerNorms (needs region_embedding='visualbert')"
        )
    if config.region_location_dim:
        reasons.append(f"region_location_dim={config.region_location_dim}: VisualBERT has no box-location input (needs 0)")
    if config.hidden_act not in SUPPORTED_ACTS:
        reasons.append(f"hidden_act={config.hidden_act!r}")
    if reasons:
        raise ConversionError("this vlbert model cannot be expressed as VisualBERT:\n  " + "\n  ".join(reasons))


def visualbert_config_from_vlbert(config: VLBertConfig, architecture: str, num_labels: int | None = None):
    from transformers import VisualBertConfig

    values = {name: getattr(config, name) for name in SHARED_CONFIG}
    extra = {"num_labels": num_labels} if num_labels else {}
    return VisualBertConfig(
        **values,
        **extra,
        visual_embedding_dim=config.region_feature_dim,
        pad_token_id=config.pad_token_id,
        bypass_transformer=False,
        tie_word_embeddings=True,
        architectures=[architecture],
    )


def vlbert_to_visualbert_state(
    config: VLBertConfig, state: dict[str, torch.Tensor], architecture: str, vqa_style: str | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(VisualBERT state dict for `architecture`, vlbert keys it leaves out) from a vlbert directory's state."""
    check_visualbert_compatible(config)
    encoder = {k.removeprefix("vlbert."): v for k, v in state.items() if k.startswith("vlbert.")}
    prefix = "" if architecture == "VisualBertModel" else "visual_bert."
    out = {prefix + src: encoder[dst] for src, dst in EMBEDDINGS.items()}
    out.update(vlbert_encoder_to_bert(encoder, prefix, config.num_hidden_layers))
    used = {"vlbert." + k for k in encoder}
    if architecture == "VisualBertForPreTraining":
        missing = [dst for dst in (*MLM_HEAD.values(), *ITM_HEAD.values()) if dst not in state]
        if missing:
            raise ConversionError(f"VisualBertForPreTraining needs the MLM and ITM heads; the vlbert model lacks {missing}")
        out.update({src: state[dst] for src, dst in MLM_HEAD.items()})
        out.update({src: state[dst].flip(0).contiguous() for src, dst in ITM_HEAD.items()})
        used |= set(MLM_HEAD.values()) | set(ITM_HEAD.values())
    if architecture == "VisualBertForQuestionAnswering":
        from vlbert.convert.vqa_head import vlbert_vqa_to_visualbert_qa

        if "vqa_head.classifier.weight" not in state:
            raise ConversionError("VisualBertForQuestionAnswering needs a VQA head; the vlbert model has no vqa_head")
        head, head_used = vlbert_vqa_to_visualbert_qa(state, vqa_style)
        out.update(head)
        used |= set(head_used)
    return out, sorted(set(state) - used)


def choose_architecture(state: dict[str, torch.Tensor], head: str) -> str:
    """head "auto": the VQA head if there is one, else the pretraining heads, else the bare model."""
    if head == "auto":
        head = "vqa" if "vqa_head.classifier.weight" in state else "pretraining" if "mlm_head.bias" in state else "none"
    return {"vqa": "VisualBertForQuestionAnswering", "pretraining": "VisualBertForPreTraining", "none": "VisualBertModel"}[head]


def export_visualbert(src: str | os.PathLike, dst: str | os.PathLike, head: str = "auto") -> tuple[Path, ConversionReport]:
    """Write a vlbert model directory as a transformers VisualBERT directory (+ tokenizer files)
    that `VisualBert*.from_pretrained(dst)` loads and that computes the same outputs."""
    from transformers import VisualBertForPreTraining, VisualBertForQuestionAnswering, VisualBertModel

    from vlbert.convert.output import new_directory
    from vlbert.modeling.pretrained import load_pretrained
    from vlbert.modeling.vqa import answers_of

    src = Path(src)
    try:
        config, state = load_pretrained(src)
    except (FileNotFoundError, ValueError) as error:
        raise ConversionError(str(error)) from error
    check_visualbert_compatible(config)
    vqa_style = config.vqa_head_style
    conversion = src / "conversion.json"
    if conversion.exists():  # directories converted before the style was in config.json
        vqa_style = (json.loads(conversion.read_text()).get("vqa_head") or {}).get("style") or vqa_style
    architecture = choose_architecture(state, head)
    hf_state, left_out = vlbert_to_visualbert_state(config, state, architecture, vqa_style)
    answers = answers_of(src) if architecture == "VisualBertForQuestionAnswering" else None
    num_labels = int(state["vqa_head.classifier.weight"].shape[0]) if architecture.endswith("QuestionAnswering") else None
    hf_config = visualbert_config_from_vlbert(config, architecture, num_labels)
    if answers is not None and len(answers) == num_labels:
        hf_config.id2label = dict(enumerate(answers))
        hf_config.label2id = {answer: i for i, answer in enumerate(answers)}
    model_class = {"VisualBertModel": VisualBertModel, "VisualBertForPreTraining": VisualBertForPreTraining,
                   "VisualBertForQuestionAnswering": VisualBertForQuestionAnswering}[architecture]
    model = model_class(hf_config)
    missing, unexpected = model.load_state_dict(hf_state, strict=False)
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    if unexpected or set(missing) - tied:
        raise AssertionError(f"VisualBERT state mismatch: missing {sorted(set(missing) - tied)}, unexpected {unexpected}")
    report = ConversionReport(str(src), "vlbert", f"visualbert ({architecture})")
    report.converted = {key: "" for key in hf_state}
    report.unconverted = {key: f"no place in {architecture}" for key in left_out}
    if architecture == "VisualBertForPreTraining":
        report.notes.append("itm_head rows swapped back: VisualBERT seq_relationship class 0 = matched")
    tokenizer = None
    if (src / "tokenizer_config.json").exists() or (src / "vocab.txt").exists():
        from vlbert.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(src)
    else:
        report.notes.append(f"{src} holds no tokenizer files; none written")
    with new_directory(dst) as tmp:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return Path(dst), report
