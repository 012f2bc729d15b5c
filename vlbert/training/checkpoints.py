"""What a vlbert Lightning checkpoint holds besides the weights, and reading one back.

Every checkpoint written by `vlbert pretrain`, `vqa`, `retrieval` or `caption` carries:
  vlbert_job       which job wrote it ("pretrain", "vqa", "retrieval", "caption")
  vlbert_config    the model's VLBertConfig as plain data (answers included)
  vlbert_files     the extra files of its model directory (e.g. answers.json), as plain data
  vlbert_features  the header of the features it was trained on (features.json)
  vlbert_tokenizer where the tokenizer was loaded from
  vlbert_vocabulary a digest of the tokenizer's vocabulary (a resumed run must use the same one)
  vlbert_card      what the model card needs that only the run knows (data, batch, steps, metrics)
  vlbert_rng       the global RNG states (dropout), for an exact resume
Weights are under state_dict["model.*"]. Everything is plain data: checkpoints load with
torch.load(weights_only=True).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch

from vlbert.errors import InputError
from vlbert.modeling import VLBertConfig, VLBertForCaptioning, VLBertForPretraining, VLBertForRetrieval, VLBertForVQA, VLBertPreTrainedModel
from vlbert.modeling.vqa import with_answers

JOB_MODELS: dict[str, type[VLBertPreTrainedModel]] = {
    "pretrain": VLBertForPretraining,
    "vqa": VLBertForVQA,
    "retrieval": VLBertForRetrieval,
    "caption": VLBertForCaptioning,
}
MODEL_PREFIX = "model."


class CheckpointError(InputError):
    """A file that is not a vlbert checkpoint, or one that lacks what is asked of it."""


def config_data(config: VLBertConfig) -> dict:
    """The config as JSON-safe plain data (what config.json holds)."""
    return json.loads(config.to_json_string(use_diff=False))


def read_checkpoint(path: str | Path) -> dict:
    """A vlbert checkpoint, loaded with weights_only=True (mmap: weights are paged in when used);
    one written before checkpoints named their job is brought to today's layout."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes zip files since torch 1.6
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (not a torch.save zip file); give a .ckpt file "
                              "that `vlbert pretrain`, `vqa`, `retrieval` or `caption` wrote")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises many kinds for a file that is not a checkpoint
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict)")
    if "vlbert_job" not in checkpoint:
        upgrade_legacy(checkpoint, path)
    return checkpoint


def upgrade_legacy(checkpoint: dict, source) -> None:
    """Bring a checkpoint of vlbert 0.1 (no vlbert_job) to today's layout, in place: the job told
    by the markers those versions wrote, weights renamed under "model.", the config rebuilt."""
    hparams = checkpoint.get("hyper_parameters", {})
    state = checkpoint["state_dict"]
    if "vqa_answers" in checkpoint:
        job, prefix = "vqa", ""
    elif "objectives" in hparams:
        job, prefix = "pretrain", "net."
    elif "negatives" in hparams:
        job, prefix = "retrieval", ""
    else:
        raise CheckpointError(f"{source} is not a checkpoint of `vlbert pretrain`, `vlbert vqa` or `vlbert retrieval`")
    if "model" not in hparams:
        raise CheckpointError(f"{source} has no model configuration (hyper_parameters.model)")
    checkpoint["state_dict"] = {MODEL_PREFIX + key.removeprefix(prefix): value for key, value in state.items()}
    config = VLBertConfig.from_settings(hparams["model"])
    files = {}
    if job == "vqa":
        answers = checkpoint["vqa_answers"]
        config = with_answers(config, list(answers["answers"]))
        files["answers.json"] = answers
        data = checkpoint.get("datamodule_hyper_parameters") or {}
        files["vqa.json"] = {k: data[k] for k in ("max_text_len", "max_regions") if k in data}
    checkpoint.update(vlbert_job=job, vlbert_config=config_data(config), vlbert_files=files)


def model_from_checkpoint(checkpoint: dict, source) -> VLBertPreTrainedModel:
    """The job's model with every weight of the checkpoint (a missing or extra weight is named)."""
    from vlbert.modeling.pretrained import load_complete_state

    job = checkpoint["vlbert_job"]
    if job not in JOB_MODELS:
        raise CheckpointError(f"{source} was written by an unknown job {job!r}; known: {sorted(JOB_MODELS)}")
    model = JOB_MODELS[job](VLBertConfig(**checkpoint["vlbert_config"]))
    load_complete_state(model, checkpoint["state_dict"], MODEL_PREFIX, source)
    return model
