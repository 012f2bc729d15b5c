"""The model card (README.md) of a model directory, written from what the run knows.

`model_card(facts)` is a pure function of plain data. `card_facts` gathers the facts from the same
sources on both paths that write a directory, so both give the same card for the same state:

- at the end of fit, from the LightningModule (`TrainingModule.model_card`);
- in `vlbert export`, from the checkpoint, whose `vlbert_card` is `training_record` as it was
  when the checkpoint was saved.

A fact the run did not record is left out, or the section says "not recorded": never guessed.

The facts (every key optional but `job` and `model_class`):
  job, model_class      "vqa", "VLBertForVQA"
  model                 sizes from the config (MODEL_FIELDS), num_parameters
  data                  the datamodule's paths and settings (DATA_FIELDS), train_examples
  objectives            pretrain: weights, mixing, masking probabilities
  answers               vqa: count, min_count, count_by (of answers.json)
  negatives             retrieval: kept negatives, loss, margin, random_steps; dropout
  optimization          lr, weight_decay, warmup, head_lr_multiplier
  batch                 batch_size (per device), devices, accumulate_grad_batches, precision
  progress              global_step, epochs (optimiser steps / steps per epoch)
  metrics, metrics_step the last validation metrics and the step they were measured at
  features              features.json: feature_dim, num_classes, provenance
  initialised_from      {"bert": ..., "init_from": ...} (None: from the settings alone)
  versions, date        of the run, when these weights were saved
"""
from __future__ import annotations

import dataclasses
import datetime
import math
from pathlib import Path
from typing import Any

MODEL_FIELDS = (
    "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "hidden_act", "vocab_size",
    "max_position_embeddings", "region_feature_dim", "region_location_dim", "region_embedding", "num_region_classes",
    "vqa_head_style",
)
# The datamodule settings a card reports (whichever the job's datamodule has).
DATA_FIELDS = (
    "features", "annotations", "train_annotations", "train_questions", "train_splits", "val_annotations",
    "val_questions", "val_splits", "tokenizer", "train_fraction", "keep_unanswerable", "max_text_len", "max_regions",
    "negative_images", "negative_captions", "seed",
)
JOB_TITLES = {"pretrain": "pretrained with `vlbert pretrain`", "vqa": "fine-tuned for VQA with `vlbert vqa`",
              "retrieval": "fine-tuned for image-text retrieval with `vlbert retrieval`"}
JOB_TAGS = {"pretrain": ["pretraining"], "vqa": ["visual-question-answering"], "retrieval": ["image-text-retrieval"]}
PIPELINE_TAGS = {"vqa": "visual-question-answering"}
AUTO_CLASSES = {"VLBertForPretraining": "AutoModelForPreTraining", "VLBertForVQA": "AutoModelForVisualQuestionAnswering"}
OBJECTIVE_NAMES = {
    "mlm": "masked language modelling", "mrfr": "masked-region feature regression",
    "mrc": "masked-region classification", "mrc_kl": "KL to the detector's class distribution",
    "itm": "image-text matching",
}
NOT_RECORDED = "Not recorded."


# -- collecting ---------------------------------------------------------------------------------

def plain(value: Any) -> Any:
    """JSON-like plain data (what a checkpoint loaded with weights_only=True may hold)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None:
        return None
    for kind in (bool, int, float, str):  # exactly these types: subclasses (numpy floats, TorchVersion) pickle by class
        if isinstance(value, kind):
            return kind(value)
    if hasattr(value, "item"):  # a tensor or numpy scalar
        return value.item()
    return str(value)


def versions() -> dict[str, str]:
    import torch
    import transformers

    from vlbert import __version__

    return {"vlbert": str(__version__), "transformers": str(transformers.__version__), "torch": str(torch.__version__)}


def data_record(hparams: dict | None) -> dict:
    hparams = dict(hparams or {})
    return {name: plain(hparams[name]) for name in DATA_FIELDS if hparams.get(name) is not None}


def training_record(trainer, datamodule, validated_at_step: int | None = None) -> dict:
    """What only the run knows (plain data): the data, the batch, progress, the last validation
    metrics, versions and date. Checkpoints carry it as `vlbert_card`."""
    hparams = dict(getattr(datamodule, "hparams", None) or {})
    record: dict[str, Any] = {"versions": versions(), "date": datetime.date.today().isoformat()}
    data = data_record(hparams)
    if trainer is None:
        if data:
            record["data"] = data
        return record
    dataset = getattr(trainer.train_dataloader, "dataset", None)
    try:
        data["train_examples"] = len(dataset) if dataset is not None else None
    except TypeError:  # an iterable dataset without a length
        pass
    record["data"] = {k: v for k, v in data.items() if v is not None}
    record["batch"] = {k: plain(v) for k, v in (
        ("batch_size", hparams.get("batch_size")), ("devices", trainer.world_size),
        ("accumulate_grad_batches", trainer.accumulate_grad_batches), ("precision", str(trainer.precision)),
    ) if v is not None}
    record["progress"] = {"global_step": int(trainer.global_step)}
    # Epochs as optimiser steps over steps per epoch, not Lightning's epoch counter, which moves on
    # when max_steps ends an epoch early: so a checkpoint and the model at fit end report the same.
    per_epoch = trainer.num_training_batches
    if isinstance(per_epoch, (int, float)) and math.isfinite(per_epoch) and per_epoch > 0:
        steps_per_epoch = math.ceil(per_epoch / max(int(trainer.accumulate_grad_batches), 1))
        record["progress"]["epochs"] = trainer.global_step / steps_per_epoch
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("val/")}
    if metrics:
        record["metrics"] = metrics
        if validated_at_step is not None:
            record["metrics_step"] = int(validated_at_step)
    return plain(record)


def card_facts(
    job: str,
    model_class: str,
    config: dict,
    hyper_parameters: dict | None,
    files: dict | None,
    record: dict | None,
    initialised_from: dict | None,
    features: dict | None,
    num_parameters: int | None = None,
) -> dict:
    """The facts of `model_card` from a run's plain data: the config (config.json), the module's
    hyperparameters, the job's files, `training_record`, where it was initialised from and the
    features' header."""
    hp = plain(dict(hyper_parameters or {}))
    facts: dict[str, Any] = {"job": job, "model_class": model_class,
                             "model": {k: config[k] for k in MODEL_FIELDS if k in config}}
    if job != "vqa":
        facts["model"].pop("vqa_head_style", None)
    if num_parameters is not None:
        facts["model"]["num_parameters"] = int(num_parameters)
    if job == "pretrain" and isinstance(hp.get("objectives"), dict):
        facts["objectives"] = hp["objectives"]
    vocab = (files or {}).get("answers.json")
    if job == "vqa" and isinstance(vocab, dict) and "answers" in vocab:
        facts["answers"] = {"count": len(vocab["answers"]), **{k: vocab[k] for k in ("min_count", "count_by") if vocab.get(k) is not None}}
    if job == "retrieval" and isinstance(hp.get("negatives"), dict):
        facts["negatives"] = {**hp["negatives"], **({"dropout": hp["dropout"]} if hp.get("dropout") is not None else {})}
    if isinstance(hp.get("optimization"), dict):
        facts["optimization"] = {**hp["optimization"], **({"head_lr_multiplier": hp["head_lr_multiplier"]} if "head_lr_multiplier" in hp else {})}
    for key, value in plain(dict(record or {})).items():
        facts[key] = value
    if features:
        facts["features"] = plain(features)
    if initialised_from is not None:
        facts["initialised_from"] = plain(initialised_from)
    return facts


# -- writing ------------------------------------------------------------------------------------

def _text(value: Any) -> str:
    """A value in running text (dicts as key=value, lists joined)."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_text(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _code(value: Any) -> str:
    return ", ".join(f"`{v}`" for v in value) if isinstance(value, list) else f"`{value}`"


def _cell(value: Any) -> str:
    return _text(value).replace("|", "\\|")


def _front_matter(facts: dict) -> list[str]:
    job = facts["job"]
    tags = ["vision-language", "vlbert", *JOB_TAGS.get(job, [])]
    backend = ((facts.get("features") or {}).get("provenance") or {}).get("backend")
    if backend == "synthetic":
        tags.append("synthetic-data")
    lines = ["---", "library_name: vlbert", "tags:", *[f"- {tag}" for tag in tags]]
    if job in PIPELINE_TAGS:
        lines.append(f"pipeline_tag: {PIPELINE_TAGS[job]}")
    return [*lines, "---", ""]


def _loading(facts: dict) -> list[str]:
    cls, job = facts["model_class"], facts["job"]
    lines = ["## How to load", "", "```python", "import vlbert  # registers model_type \"vlbert\" with transformers' Auto classes",
             f"from vlbert import {cls}", "", f'model = {cls}.from_pretrained("path/to/this/directory")']
    auto = AUTO_CLASSES.get(cls)
    if auto:
        lines += [f"# or: from transformers import {auto}; {auto}.from_pretrained(...)"]
    lines += ["# the encoder alone: transformers.AutoModel.from_pretrained(...) gives a VLBertModel", "```", ""]
    usage = {
        "pretrain": "Fine-tune it with `vlbert vqa fit --model.init_from DIR` or `vlbert retrieval fit --model.init_from DIR`.",
        "vqa": "`model(...).logits` scores every answer of `model.answers`; "
               "`vlbert answer --model DIR --image photo.jpg --question \"...\"` answers from an image.",
        "retrieval": "`model(...).scores` is the image-text matching log-odds of each (caption, image) pair.",
    }.get(job)
    return lines + ([usage, ""] if usage else [])


def _model(facts: dict) -> list[str]:
    model = facts.get("model") or {}
    rows = [(label, model[key]) for key, label in (
        ("num_hidden_layers", "layers"), ("hidden_size", "hidden size"), ("num_attention_heads", "attention heads"),
        ("intermediate_size", "feed-forward size"), ("hidden_act", "activation"), ("vocab_size", "vocabulary"),
        ("max_position_embeddings", "longest text (tokens)"), ("region_feature_dim", "region feature dim"),
        ("region_embedding", "region embedding"), ("region_location_dim", "region location dim"),
        ("num_region_classes", "region classes"), ("vqa_head_style", "VQA head"),
    ) if key in model]
    if "num_parameters" in model:
        rows.append(("parameters", f"{model['num_parameters']:,}"))
    if not rows:
        return ["## Model", "", NOT_RECORDED, ""]
    return ["## Model", "", "| | |", "|---|---|", *[f"| {label} | {_cell(value)} |" for label, value in rows], ""]


def _data(facts: dict) -> list[str]:
    data = facts.get("data") or {}
    labels = (
        ("features", "region features"), ("annotations", "annotations"), ("train_questions", "training questions"),
        ("train_annotations", "training annotations"), ("train_splits", "training splits"),
        ("val_questions", "validation questions"), ("val_annotations", "validation annotations"),
        ("val_splits", "validation splits"), ("tokenizer", "tokenizer"),
    )
    lines = [f"- {label}: {_code(data[key])}" for key, label in labels if key in data]
    settings = (
        ("train_examples", "training examples"), ("train_fraction", "fraction of the training questions used"),
        ("keep_unanswerable", "unanswerable questions kept"), ("max_text_len", "max text tokens"),
        ("max_regions", "max regions per image"), ("seed", "data seed"),
    )
    for key, label in settings:
        if key in data:
            value = f"{data[key]:,}" if key == "train_examples" else _text(data[key])
            lines.append(f"- {label}: {value}")
    return ["## Training data", "", *(lines or [NOT_RECORDED]), ""]


def _objectives(facts: dict) -> list[str]:
    objectives = facts.get("objectives")
    if not objectives:
        return []
    rows = [f"| {name} ({OBJECTIVE_NAMES[name]}) | {_text(float(objectives[name])) if objectives[name] else 'off'} |"
            for name in OBJECTIVE_NAMES if name in objectives]
    lines = ["## Objectives", "", "| objective | weight |", "|---|---|", *rows, ""]
    mixing = objectives.get("mixing")
    if mixing == "sample":
        lines.append("- mixing: sample (one objective per step, drawn with the weights as ratios)")
    elif mixing == "sum":
        lines.append("- mixing: sum (each example one role, the weighted losses added)")
    for key, label in (("text_mask_prob", "text tokens masked"), ("region_mask_prob", "regions masked"),
                       ("itm_negative_prob", "ITM pairs with another image")):
        if key in objectives:
            lines.append(f"- {label}: {objectives[key]:.0%}")
    return [*lines, ""]


def _answers(facts: dict) -> list[str]:
    answers = facts.get("answers")
    if not answers:
        return []
    line = f"{answers['count']:,} answers (answers.json)"
    if "min_count" in answers:
        line += f": those counted at least {answers['min_count']} times in the training annotations"
        if "count_by" in answers:
            line += f" (counted by {answers['count_by']})"
    return ["## Answers", "", line + ".", ""]


def _negatives(facts: dict) -> list[str]:
    negatives = facts.get("negatives")
    if not negatives:
        return []
    data = facts.get("data") or {}
    lines = []
    for kind in ("images", "captions"):
        if kind in negatives:
            sampled = data.get(f"negative_{kind}")
            lines.append(f"- negative {kind} per positive: the hardest {negatives[kind]}"
                         + (f" of {sampled} sampled" if sampled is not None else ""))
    if "loss" in negatives:
        lines.append(f"- loss: {negatives['loss']}" + (f" (margin {negatives['margin']:g})" if negatives["loss"] == "margin" and "margin" in negatives else ""))
    if negatives.get("random_steps"):
        lines.append(f"- random instead of hardest negatives for the first {negatives['random_steps']} steps")
    if negatives.get("dropout") is not None:
        lines.append(f"- dropout: {negatives['dropout']:g}")
    return ["## Negatives", "", *lines, ""]


def _optimisation(facts: dict) -> list[str]:
    opt, batch = facts.get("optimization") or {}, facts.get("batch") or {}
    lines = []
    if "lr" in opt:
        line = f"- AdamW, peak learning rate {opt['lr']:g}"
        if "weight_decay" in opt:
            line += f", weight decay {opt['weight_decay']:g}"
        if "warmup" in opt:
            warmup = opt["warmup"]
            line += (f", linear warm-up over {warmup:.0%} of the steps" if warmup < 1 else f", linear warm-up over {int(warmup)} steps")
        lines.append(line + ", then linear decay to 0")
    if "head_lr_multiplier" in opt:
        lines.append(f"- task head learning rate: {opt['head_lr_multiplier']:g} x the encoder's")
    if "batch_size" in batch:
        line = f"- batch size: {batch['batch_size']} per device"
        if "devices" in batch and "accumulate_grad_batches" in batch:
            total = batch["batch_size"] * batch["devices"] * batch["accumulate_grad_batches"]
            line += f" x {batch['devices']} device(s) x {batch['accumulate_grad_batches']} accumulated = {total} per step"
        lines.append(line)
    if "precision" in batch:
        lines.append(f"- precision: {batch['precision']}")
    return ["## Optimisation", "", *(lines or [NOT_RECORDED]), ""]


def _progress(facts: dict) -> list[str]:
    progress = facts.get("progress") or {}
    lines = []
    if "global_step" in progress:
        lines.append(f"- optimiser steps: {progress['global_step']:,}")
    if "epochs" in progress:
        lines.append(f"- epochs: {progress['epochs']:.2f}")
    metrics = facts.get("metrics") or {}
    out = ["## Training", "", *(lines or [NOT_RECORDED]), ""]
    heading = "## Validation metrics" + (f" (at step {facts['metrics_step']:,})" if "metrics_step" in facts else "")
    if metrics:
        rows = [f"| {name} | {value:.4f} |" for name, value in sorted(metrics.items())]
        out += [heading, "", "| metric | value |", "|---|---|", *rows, ""]
    else:
        out += [heading, "", "Not recorded (no validation had run when these weights were saved).", ""]
    return out


def _features(facts: dict) -> list[str]:
    header = facts.get("features")
    if not header:
        return ["## Region features", "", NOT_RECORDED, ""]
    provenance = dict(header.get("provenance") or {})
    provenance.pop("run", None)  # how the extraction went (host, time): not what made the features
    lines = []
    for key, label in (("feature_dim", "feature dim"), ("num_classes", "classes")):
        if key in header:
            lines.append(f"- {label}: {header[key]}")
    for key, label in (("backend", "backend"), ("model", "detector"), ("weights", "weights")):
        if key in provenance:
            lines.append(f"- {label}: {_text(provenance.pop(key))}")
    regions = provenance.pop("regions", None)
    if isinstance(regions, dict):
        selection = regions.get("selection")
        lines.append(f"- regions: {regions.get('source', 'not recorded')}" + (f"; box selection: {_text(selection)}" if selection else "")
                     + "".join(f"; {k}: {_text(v)}" for k, v in regions.items() if k not in ("source", "selection")))
    elif regions is not None:
        lines.append(f"- regions: {_text(regions)}")
    if "settings" in provenance:
        lines.append(f"- settings: {_text(provenance.pop('settings'))}")
    for key, value in provenance.items():
        if key not in ("feature_dim", "num_classes") or header.get(key) != value:
            lines.append(f"- {key}: {_text(value)}")
    if not provenance and not lines:
        lines.append("- provenance: not recorded")
    return ["## Region features", "", *lines, ""]


def _initialisation(facts: dict) -> list[str]:
    if "initialised_from" not in facts:
        return ["## Initialisation", "", NOT_RECORDED, ""]
    init = facts["initialised_from"] or {}
    if init.get("init_from"):
        line = f"From the vlbert model directory {_code(init['init_from'])}."
    elif init.get("bert"):
        line = f"From the BERT checkpoint {_code(init['bert'])} (the region layers started new)."
    else:
        line = "From scratch (random initialisation from the model settings)."
    return ["## Initialisation", "", line, ""]


def _versions(facts: dict) -> list[str]:
    versions_ = facts.get("versions") or {}
    lines = []
    if versions_:
        lines.append("- trained with " + ", ".join(f"{name} {version}" for name, version in versions_.items()))
    if facts.get("date"):
        lines.append(f"- date: {facts['date']} (when these weights were saved)")
    return ["## Versions", "", *(lines or [NOT_RECORDED]), ""]


def model_card(facts: dict) -> str:
    """README.md of a model directory (Hugging Face model-card layout) from `facts` (see the module docstring)."""
    job, cls = facts["job"], facts["model_class"]
    title = JOB_TITLES.get(job, f"written by `vlbert {job}`")
    lines = [
        *_front_matter(facts),
        f"# {cls}",
        "",
        f"A vision-language BERT (single stream: text tokens and image regions in one encoder), {title}. "
        "This card was written by vlbert from what the run recorded; what it did not record is left out.",
        "",
        *_loading(facts), *_model(facts), *_data(facts), *_objectives(facts), *_answers(facts), *_negatives(facts),
        *_optimisation(facts), *_progress(facts), *_features(facts), *_initialisation(facts), *_versions(facts),
    ]
    return "\n".join(lines).rstrip() + "\n"
