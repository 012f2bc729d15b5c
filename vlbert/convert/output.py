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

from vlbert.convert.state import ConversionError, Converted
from vlbert.modeling import VLBertConfig, VLBertForPretraining, VLBertForVQA, VLBertPreTrainedModel
from vlbert.modeling.model import OPTIONAL_ENCODER_KEYS
from vlbert.modeling.pretrained import quiet_transformers, write_extras
from vlbert.modeling.vqa import ANSWERS_FORMAT, with_answers

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


def models_for(config: VLBertConfig, heads: set[str], vqa_head: dict | None, answers: list[str] | None) -> list[VLBertPreTrainedModel]:
    """The vlbert models whose layouts hold the converted heads, the one the directory is saved as
    first: VLBertForVQA when there is a VQA head (its style and answers in the config), and
    VLBertForPretraining for the pretraining heads. Each loads its own heads from the directory."""
    unknown = sorted(heads - set(HEADS))
    if unknown:
        raise ValueError(f"unknown head(s) {unknown}; known: {HEADS}")
    models: list[VLBertPreTrainedModel] = []
    if "vqa_head" in heads:
        if vqa_head is None:
            raise ValueError("a vqa_head needs its style and size ({'style': ..., 'num_answers': ...})")
        config.vqa_head_style = vqa_head["style"]
        with_answers(config, answers or [f"answer_{i}" for i in range(vqa_head["num_answers"])])
        models.append(VLBertForVQA(config))
    if heads - {"vqa_head"} or not models:
        models.append(VLBertForPretraining(config))
    return models


def check_state(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], origin: dict[str, str], source: str) -> None:
    """Every converted tensor must have a place of its shape in `own`, and the encoder and each
    head `state` has must be complete; errors name the source tensors."""
    problems = []
    for key, value in state.items():
        if key not in own:
            raise AssertionError(f"converter produced {key!r}, which the vlbert modules do not have")
        if tuple(value.shape) != tuple(own[key].shape):
            problems.append(
                f"{origin.get(key, key)} has shape {tuple(value.shape)} but vlbert {key} needs {tuple(own[key].shape)}"
            )
    present = {key.split(".")[0] for key in state} | {"vlbert"}
    # the masked-region vector is pretraining-only: a source without one (VisualBERT) leaves it new
    missing = [key for key in own if key not in state and key.split(".")[0] in present
               and key.removeprefix("vlbert.") not in OPTIONAL_ENCODER_KEYS]
    if problems or missing:
        raise ConversionError(
            f"{source} does not fit the configuration read from it (mismatched sizes?):\n  "
            + "\n  ".join(problems + [f"no source tensor for vlbert {key}" for key in missing])
        )


def write_vlbert_directory(dst: str | os.PathLike, converted: Converted, tokenizer=None, answers: dict | None = None) -> Path:
    """Check the converted tensors against fresh vlbert models and save them as a model directory
    (the converted tensors only: heads the source lacks are not written as if converted) with
    conversion.json (the report) and, when given, the tokenizer and the answers (answers.json and
    config.id2label). `answers` is read_answers_file's dict."""
    config, state, report = converted.config, converted.state, converted.report
    heads = {key.split(".")[0] for key in state} - {"vlbert"}
    answer_list = list(answers["answers"]) if answers is not None else None
    if answers is not None:
        if report.vqa_head is None:
            raise ConversionError("--answers was given but the checkpoint has no VQA head")
        if len(answer_list) != report.vqa_head["num_answers"]:
            raise ConversionError(
                f"the answer vocabulary has {len(answer_list)} answers but the VQA head scores {report.vqa_head['num_answers']}"
            )
    models = models_for(config, heads, report.vqa_head, answer_list)
    own = {key: value for model in models for key, value in model.state_dict().items()}
    check_state(own, state, converted.origin, report.source)
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        raise ConversionError(
            f"the tokenizer has {len(tokenizer)} tokens but the checkpoint's vocabulary has {config.vocab_size}; "
            "pass the tokenizer the checkpoint was trained with (--tokenizer)"
        )
    files = {"conversion.json": report.to_dict()}
    if answers is not None:
        files["answers.json"] = {"format": ANSWERS_FORMAT, "version": 1, **answers}
    weights = {key: value.to(own[key].dtype).contiguous() for key, value in state.items()}
    with new_directory(dst) as tmp:
        with quiet_transformers():
            models[0].save_pretrained(tmp, state_dict=weights)
        write_extras(tmp, tokenizer, None, files)
    return Path(dst)
