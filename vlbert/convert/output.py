"""Writing a converted model: check the tensors against the modules they will load into, then
write the directory under a temporary name and rename it, so a failed conversion leaves nothing
behind and an existing directory is never written into."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from vlbert.convert.state import ConversionError, Converted
from vlbert.convert.vqa_head import ConvertedVQAHead
from vlbert.modeling.config import VLBertConfig
from vlbert.modeling.heads import ITMHead, MLMHead, RegionClassHead, RegionFeatureHead
from vlbert.modeling.model import OPTIONAL_ENCODER_KEYS, VLBertModel
from vlbert.modeling.pretrained import save_pretrained

HEADS = ("mlm_head", "itm_head", "mrfr_head", "mrc_head", "vqa_head")


def check_output_path(dst: str | os.PathLike, src: str | os.PathLike) -> Path:
    """DST must not be SRC and must not exist (or be an empty directory): nothing of the user's is overwritten."""
    dst, src = Path(dst), Path(src)
    if dst.resolve() == src.resolve():
        raise ConversionError(f"--out {dst} is the source itself; choose a new directory")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ConversionError(f"--out {dst} already exists and is not empty; choose a new directory (nothing is overwritten)")
    return dst


@contextlib.contextmanager
def new_directory(dst: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `dst` to write into; on success it becomes `dst`, on error it is removed."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.converting-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if dst.exists():
            dst.rmdir()  # empty, checked by check_output_path
        tmp.rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def vlbert_modules(config: VLBertConfig, heads: list[str], vqa_head: dict | None = None) -> nn.Module:
    """The encoder as "vlbert" plus the named heads, laid out as in a vlbert model directory.
    `vqa_head` ({"style", "num_answers"}) sizes the VQA head when "vqa_head" is named."""
    unknown = sorted(set(heads) - set(HEADS))
    if unknown:
        raise ValueError(f"unknown head(s) {unknown}; known: {HEADS}")
    holder = nn.Module()
    holder.vlbert = VLBertModel(config)
    if "mlm_head" in heads:
        holder.mlm_head = MLMHead(config, holder.vlbert.text_embeddings.word_embeddings)
    if "itm_head" in heads:
        holder.itm_head = ITMHead(config)
    if "mrfr_head" in heads:
        holder.mrfr_head = RegionFeatureHead(config, holder.vlbert.region_embeddings.feature_proj)
    if "mrc_head" in heads:
        holder.mrc_head = RegionClassHead(config)
    if "vqa_head" in heads:
        if vqa_head is None:
            raise ValueError("a vqa_head needs its style and size ({'style': ..., 'num_answers': ...})")
        holder.vqa_head = ConvertedVQAHead(config, vqa_head["num_answers"], vqa_head["style"])
    return holder


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], origin: dict[str, str], source: str) -> None:
    """Load `state` into `module`, every key and shape required; errors name the source tensors."""
    own = module.state_dict()
    problems = []
    for key, value in state.items():
        if key not in own:
            raise AssertionError(f"converter produced {key!r}, which the vlbert modules do not have")
        if tuple(value.shape) != tuple(own[key].shape):
            problems.append(
                f"{origin.get(key, key)} has shape {tuple(value.shape)} but vlbert {key} needs {tuple(own[key].shape)}"
            )
    # the masked-region vector is pretraining-only: a source without one (VisualBERT) leaves it new
    missing = [key for key in own if key not in state and key.removeprefix("vlbert.") not in OPTIONAL_ENCODER_KEYS]
    if problems or missing:
        raise ConversionError(
            f"{source} does not fit the configuration read from it (mismatched sizes?):\n  "
            + "\n  ".join(problems + [f"no source tensor for vlbert {key}" for key in missing])
        )
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)  # checked above


def write_vlbert_directory(dst: str | os.PathLike, converted: Converted, tokenizer=None, answers=None) -> Path:
    """Check the converted tensors against fresh vlbert modules and save them as a model directory
    with conversion.json (the report) and, when given, the tokenizer and answers.json."""
    config, state, report = converted.config, converted.state, converted.report
    heads = sorted({key.split(".")[0] for key in state} - {"vlbert"})
    module = vlbert_modules(config, heads, report.vqa_head)
    load_checked(module, state, converted.origin, report.source)
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        raise ConversionError(
            f"the tokenizer has {len(tokenizer)} tokens but the checkpoint's vocabulary has {config.vocab_size}; "
            "pass the tokenizer the checkpoint was trained with (--tokenizer)"
        )
    extra = {"conversion.json": report.to_dict()}
    if answers is not None:
        if report.vqa_head is None:
            raise ConversionError("--answers was given but the checkpoint has no VQA head")
        if len(answers) != report.vqa_head["num_answers"]:
            raise ConversionError(
                f"the answer vocabulary has {len(answers)} answers but the VQA head scores {report.vqa_head['num_answers']}"
            )
        extra["answers.json"] = answers.to_dict()
    with new_directory(dst) as tmp:
        save_pretrained(tmp, module, config, tokenizer, None, extra)
    return Path(dst)
