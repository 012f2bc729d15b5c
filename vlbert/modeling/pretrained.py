"""Weights in and out of the models' own loading: reading a model directory's tensors as they
are (for conversion), loading a state into a submodule with every mismatch named, and
initialising from HF BERT checkpoints.

A vlbert model directory (transformers' save_pretrained) holds config.json (VLBertConfig, model_type
"vlbert") and model.safetensors (keys "vlbert.*" for the encoder, "<name>_head.*" for heads), and
beside them the tokenizer files, features.json and a task's files (VQA: answers.json, vqa.json).
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file
from torch import nn

from vlbert.errors import InputError, InputNotFound
from vlbert.modeling.config import VLBertConfig

WEIGHTS_NAME = "model.safetensors"


def load_pretrained(directory: str | os.PathLike) -> tuple[VLBertConfig, dict[str, torch.Tensor]]:
    """Config and state dict of a model directory as stored, with clear errors for what is not one."""
    path = Path(directory)
    if not path.is_dir():
        raise InputNotFound(f"{path} is not a directory; expected a vlbert model directory (save_pretrained)")
    weights = path / WEIGHTS_NAME
    if not weights.exists() or not (path / "config.json").exists():
        raise InputNotFound(f"{path} lacks config.json / {WEIGHTS_NAME}; export one with `vlbert export` or convert with `vlbert convert`")
    return VLBertConfig.from_pretrained(path), load_file(str(weights))


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bars or load tables from transformers: vlbert reports what matters itself."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def write_extras(directory: str | os.PathLike, tokenizer=None, features_header: dict | None = None,
                 files: dict[str, dict | list] | None = None) -> None:
    """What a model directory holds beside config.json and the weights: the tokenizer files,
    features.json and a job's own files (name -> JSON content)."""
    out = Path(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    if features_header is not None:
        (out / "features.json").write_text(json.dumps(features_header, indent=2, sort_keys=True) + "\n")
    for name, content in (files or {}).items():
        (out / name).write_text(json.dumps(content, indent=2) + "\n")


def load_submodule_state(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, strict: bool = True) -> list[str]:
    """Load the keys under `prefix` into `module`; returns the module's keys that were not in `state`.
    With strict, shape mismatches and keys left unused under `prefix` are errors, listed."""
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    own = module.state_dict()
    mismatched = [f"{prefix}{k}: {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sub.items() if k in own and own[k].shape != v.shape]
    unexpected = [prefix + k for k in sub if k not in own]
    if mismatched or (strict and unexpected):
        raise InputError(f"cannot load weights: shape mismatches {mismatched}, unexpected keys {unexpected}")
    module.load_state_dict(sub, strict=False)
    return [k for k in own if k not in sub]


def load_complete_state(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, source) -> None:
    """load_submodule_state (strict) for a state that must hold every weight of `module`; `source`
    names where it came from in the error."""
    missing = load_submodule_state(module, state, prefix, strict=True)
    if missing:
        raise InputError(f"{source} lacks weights {missing[:10]}")


# -- HF BERT checkpoints ---------------------------------------------------------------

_BERT_LAYER_RENAMES = [
    ("encoder.layer.", "encoder.layers."),
    (".attention.output.dense.", ".attention.out."),
    (".attention.output.LayerNorm.", ".attention.LayerNorm."),
    (".intermediate.dense.", ".ffn.up."),
    (".output.dense.", ".ffn.down."),
    (".output.LayerNorm.", ".ffn.LayerNorm."),
]


def bert_to_vlbert_state(bert_state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Map a HF BERT state dict (BertModel or BertForPreTraining keys) to vlbert names.

    Returns (encoder_state for VLBertModel, head_state with "mlm_head.*" / "itm_head.*" keys
    from BERT's MLM and next-sentence heads when present). Q, K, V are fused into one matrix.
    """
    state = {}
    for key, value in bert_state.items():
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        state[key.removeprefix("bert.")] = value
    encoder, heads = {}, {}
    layer_ids = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")})
    for i in layer_ids:
        base = f"encoder.layer.{i}.attention.self."
        for kind in ("weight", "bias"):
            encoder[f"encoder.layers.{i}.attention.qkv.{kind}"] = torch.cat(
                [state.pop(f"{base}{name}.{kind}") for name in ("query", "key", "value")]
            )
    for key, value in state.items():
        if key.startswith("cls.predictions."):
            rest = key.removeprefix("cls.predictions.")
            if rest.startswith("transform."):
                heads["mlm_head." + rest] = value
            elif rest == "bias":
                heads["mlm_head.bias"] = value
            continue  # decoder.weight is tied to the word embeddings; decoder.bias duplicates bias
        if key.startswith("cls.seq_relationship."):
            # BERT's class 0 is "is next"; vlbert's ITM class 1 is "matched": swap the rows.
            heads["itm_head.classifier." + key.removeprefix("cls.seq_relationship.")] = value.flip(0)
            continue
        if key.endswith("position_ids") or key.endswith("token_type_ids"):
            continue  # buffers, not weights
        if key.startswith("embeddings."):
            key = "text_" + key
        for old, new in _BERT_LAYER_RENAMES:
            key = key.replace(old, new)
        encoder[key] = value
    return encoder, heads


def read_bert_state(name_or_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A HF BERT checkpoint's state dict, from a local directory or (on a networked machine) a hub name."""
    from transformers import BertForPreTraining
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a BertModel checkpoint lacks the heads: expected, not worth a warning
    try:
        model = BertForPreTraining.from_pretrained(str(name_or_path))
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.state_dict()


def load_bert_into(model: nn.Module, name_or_path: str | os.PathLike) -> dict[str, list[str]]:
    """Initialise a VLBertModel (or a module with `.vlbert` and heads) from a HF BERT checkpoint.

    Text embeddings and the encoder come from BERT; region layers stay newly initialised.
    Returns {"missing": [...], "loaded": [...]} for the log.
    """
    encoder_state, head_state = bert_to_vlbert_state(read_bert_state(name_or_path))
    target = model.vlbert if hasattr(model, "vlbert") else model
    config: VLBertConfig = target.config
    vocab = encoder_state["text_embeddings.word_embeddings.weight"].shape
    if vocab != (config.vocab_size, config.hidden_size):
        raise InputError(
            f"BERT checkpoint {name_or_path} has word embeddings {tuple(vocab)} but the config asks for "
            f"vocab_size={config.vocab_size}, hidden_size={config.hidden_size}; take the sizes from the checkpoint "
            "(VLBertConfig.from_bert) or fix the config"
        )
    missing = load_submodule_state(target, encoder_state, "", strict=True)
    loaded = list(encoder_state)
    if target is not model:
        for name in ("mlm_head", "itm_head"):
            head = getattr(model, name, None)
            if head is not None and any(k.startswith(name + ".") for k in head_state):
                load_submodule_state(head, head_state, name + ".", strict=True)
                loaded += [k for k in head_state if k.startswith(name + ".")]
    return {"missing": missing, "loaded": loaded}
