"""TrainingModule: the Lightning lifecycle every job shares (pretraining, VQA, retrieval).

A job's LightningModule holds `self.model` (one of vlbert.modeling's models) and writes its
steps, logging and optimiser; this base does the rest, once:

- builds the model from a vlbert model directory (`init_from`), a HF BERT checkpoint (`bert`;
  the region layers start new) or the settings alone, and checks that the encoder loaded whole;
- checks the data against the model before the first step (feature dimension, tokenizer size);
- records what the run was built from as hyperparameters, never where it writes (export_dir,
  dump_scores, results_file: LightningCLI re-applies a checkpoint's hyperparameters);
- writes the checkpoint metadata of vlbert.training.checkpoints, restores the RNG on resume;
- exports the model directory, with its model card, to `export_dir` when fit ends.

The datamodule side of the contract: after `setup`, every vlbert datamodule has `store` (the
FeatureStore), `tokenizer` and `feature_header`.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch

from vlbert.data.tags import TAG_TOKEN_TYPE
from vlbert.data.tokenizer import has_tokenizer_files, load_tokenizer, vocabulary_difference, vocabulary_fingerprint
from vlbert.errors import InputError, InputNotFound
from vlbert.modeling import ModelSettings, VLBertConfig, VLBertModel, VLBertPreTrainedModel
from vlbert.modeling.config import REGION_FIELDS
from vlbert.modeling.model import OPTIONAL_ENCODER_KEYS
from vlbert.training.checkpoints import config_data, upgrade_legacy
from vlbert.modeling.pretrained import quiet_transformers
from vlbert.training.export import write_model_directory
from vlbert.training.model_card import card_facts, model_card, training_record

log = logging.getLogger(__name__)


def as_dataclass(cls, value):
    """Accept a dataclass or its dict form (checkpoints store plain dicts, so they load with weights_only)."""
    return value if isinstance(value, cls) else cls(**value)


def as_settings(value: ModelSettings | VLBertConfig | dict) -> ModelSettings:
    if isinstance(value, VLBertConfig):
        return value.settings()
    return as_dataclass(ModelSettings, value)


def build_model(
    model_class: type[VLBertPreTrainedModel],
    settings: ModelSettings,
    bert: str | None = None,
    init_from: str | None = None,
    keep_heads: bool = True,
    **config_updates: Any,
) -> VLBertPreTrainedModel:
    """The job's model from a vlbert model directory, a HF BERT checkpoint, or `settings` alone.

    `config_updates` are set on the config in every case (e.g. a VQA model's answers, a
    fine-tuning dropout). From a directory, every encoder weight must be there (a converted
    VisualBERT may lack the masked-region vector); heads the directory lacks (or all of its heads,
    without `keep_heads`) start new, heads the job does not use are left out: both are logged.
    """
    if init_from and bert:
        raise InputError("model.init_from and model.bert are alternatives; set one of them (the other to null)")
    if init_from:
        return model_from_directory(model_class, Path(init_from), keep_heads, config_updates)
    if bert:
        from vlbert.modeling.pretrained import load_bert_into

        region = {name: getattr(settings, name) for name in REGION_FIELDS}
        config = VLBertConfig.from_bert(bert, **region)
        for name, value in config_updates.items():
            setattr(config, name, value)
        model = model_class(config)
        report = load_bert_into(model, bert)
        log.info("initialised from BERT %s; new: %s", bert, report["missing"])
        return model
    log.info("initialised from random weights (neither model.init_from nor model.bert is set)")
    return model_class(VLBertConfig.from_settings(settings, **config_updates))


def model_from_directory(model_class: type[VLBertPreTrainedModel], directory: Path, keep_heads: bool,
                         config_updates: dict[str, Any]) -> VLBertPreTrainedModel:
    if not (directory / "config.json").is_file():
        raise InputNotFound(f"model.init_from: {directory} is not a vlbert model directory (no config.json); "
                                "make one with `vlbert export` or `vlbert convert`")
    config = VLBertConfig.from_pretrained(directory)
    for name, value in config_updates.items():
        setattr(config, name, value)
    source_class = model_class if keep_heads else VLBertModel
    with quiet_transformers():
        loaded, info = source_class.from_pretrained(directory, config=config, output_loading_info=True)
    prefix = "" if source_class is VLBertModel else source_class.base_model_prefix + "."
    missing = sorted(info["missing_keys"])
    encoder_missing = [k for k in missing if k.startswith(prefix) and k.removeprefix(prefix) not in OPTIONAL_ENCODER_KEYS]
    if encoder_missing or info["mismatched_keys"]:
        raise InputError(f"model.init_from: {directory} does not hold this encoder: missing {encoder_missing[:8]}, "
                         f"mismatched {sorted(info['mismatched_keys'])[:8]}")
    if keep_heads:
        model = loaded
        new = sorted({k.split(".")[0] for k in missing if not k.startswith(prefix)})
    else:
        model = model_class(config)
        model.vlbert.load_state_dict(loaded.state_dict())
        new = sorted({name for name, _ in model.named_children() if name != model.base_model_prefix})
    unused = sorted({k.split(".")[0] for k in info["unexpected_keys"]})
    log.info("initialised from %s; new: %s; not used: %s", directory, new or "none", unused or "none")
    return model


class TrainingModule(L.LightningModule):
    """The shared lifecycle (see the module docstring). Subclasses set `job`, build `self.model`,
    call `record_hyperparameters`, and may add `check_data` and `model_files`."""

    job: ClassVar[str]
    # constructor arguments that say where a run writes: never saved, so never re-applied from a checkpoint
    output_arguments: ClassVar[tuple[str, ...]] = ("export_dir",)

    model: VLBertPreTrainedModel
    # the global step of the last validation in this process: the model card says when its metrics were measured
    validated_at_step: int | None = None

    def __init__(self, export_dir: str | None = None) -> None:
        super().__init__()
        self.export_dir = export_dir
        self.initialised_from: dict[str, Any] = {}

    @property
    def config(self) -> VLBertConfig:
        return self.model.config

    def record_hyperparameters(self, **values: Any) -> None:
        """Save what rebuilds this module for a checkpoint: the settings actually built (`model`),
        not the directories they came from (the checkpoint has the weights; the origin is kept in
        the checkpoint as vlbert_init), and never the output arguments."""
        leaked = sorted(set(values) & set(self.output_arguments))
        if leaked:
            raise AssertionError(f"output arguments {leaked} must not be saved as hyperparameters")
        self.initialised_from = {k: values.pop(k) for k in ("bert", "init_from") if k in values}
        plain = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in values.items()}
        self.save_hyperparameters({"model": self.config.settings().to_dict(), **plain,
                                   **{k: None for k in self.initialised_from}})

    def freeze_mask_embedding(self) -> None:
        """Fine-tuning masks no regions: the pretraining-only mask vector stays as loaded (and DDP
        sees no parameter without a gradient)."""
        self.model.vlbert.region_embeddings.mask_embedding.requires_grad_(False)

    # -- checks before the first step ------------------------------------------------------

    def _datamodule(self):
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        return datamodule if getattr(datamodule, "store", None) is not None else None

    def setup(self, stage: str) -> None:
        datamodule = self._datamodule()
        if datamodule is not None:
            self.check_inputs(datamodule, stage)

    def check_inputs(self, datamodule, stage: str) -> None:
        """The data against the model: feature dimension, tokenizer size and vocabulary, the job's own
        checks. `vlbert <job>` runs this before the trainer starts; Lightning's setup runs it again."""
        datamodule.store.check_feature_dim(self.config.region_feature_dim, "model.model.region_feature_dim")
        if len(datamodule.tokenizer) > self.config.vocab_size:
            raise InputError(
                f"the tokenizer has {len(datamodule.tokenizer)} tokens but the model's vocab_size is "
                f"{self.config.vocab_size}; use the tokenizer the model was trained with, or set "
                f"model.model.vocab_size: {len(datamodule.tokenizer)} for a new model"
            )
        self.check_tokenizer(datamodule.tokenizer)
        self.check_text_length(datamodule)
        self.check_data(datamodule, stage)

    def check_text_length(self, datamodule) -> None:
        """The longest text (with its object tags) must have position embeddings, and tags a token
        type of their own: a model without one (BERT has 2 types) grows it here (and a pretraining
        model its tag head), before a checkpoint is restored into it and the optimiser is built."""
        if "max_text_len" in datamodule.hparams and datamodule.max_text_tokens > self.config.max_position_embeddings:
            tags = f" + {datamodule.tags.max_length} for the object tags (data.max_tags + [SEP])" if datamodule.tags else ""
            raise InputError(f"texts of up to data.max_text_len={datamodule.hparams.max_text_len}{tags} tokens exceed the "
                             f"model's max_position_embeddings={self.config.max_position_embeddings}; lower data.max_text_len"
                             f"{' or data.max_tags' if tags else ''}")
        if datamodule.tags is not None and self.model.use_object_tags(TAG_TOKEN_TYPE):
            log.info("object tags: the model has %d token types (tags are type %d, new ones initialised from the text's)",
                     self.config.type_vocab_size, TAG_TOKEN_TYPE)

    # set by `--allow_tokenizer_mismatch true` (vlbert.training.cli): train with another vocabulary on purpose
    allow_tokenizer_mismatch: bool = False

    def model_tokenizer(self):
        """The tokenizer the encoder was trained with, where it is known: the init_from directory's
        (a vlbert model directory carries its tokenizer) or the BERT checkpoint's; else None."""
        source = self.initialised_from.get("init_from") or self.initialised_from.get("bert")
        if source and Path(source).is_dir() and has_tokenizer_files(source):
            return load_tokenizer(source)
        return None

    def check_tokenizer(self, tokenizer) -> None:
        """A tokenizer with other token ids than the encoder's embeddings were trained on would train
        without a word and learn nonsense; refuse it unless the user asked for it."""
        if self.allow_tokenizer_mismatch:
            return
        expected = self.model_tokenizer()
        if expected is not None and vocabulary_fingerprint(expected) != vocabulary_fingerprint(tokenizer):
            source = "model.init_from" if self.initialised_from.get("init_from") else "model.bert"
            raise InputError(
                f"data.tokenizer {tokenizer.name_or_path} is not the tokenizer {source} {expected.name_or_path} was "
                f"trained with ({vocabulary_difference(tokenizer, expected)}); set data.tokenizer: {expected.name_or_path}, "
                "or pass --allow_tokenizer_mismatch true to train with another vocabulary on purpose"
            )

    def check_data(self, datamodule, stage: str) -> None:
        """A job's own checks of its data against the model, before any work."""

    def output_paths(self, stage: str, root_dir: str) -> dict[str, tuple[Path, bool]]:
        """What `stage` writes, checked before any work: config key -> (path, whether a directory)."""
        if stage == "fit" and self.export_dir:
            return {"model.export_dir": (Path(self.export_dir), True)}
        return {}

    # -- checkpoints and export -------------------------------------------------------------

    def model_files(self) -> dict[str, dict | list]:
        """The job's extra files in its model directory (name -> JSON content)."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Dropout draws from the global RNG: keep its state so a resumed run continues exactly.
        checkpoint["vlbert_rng"] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["vlbert_rng"]["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["vlbert_job"] = self.job
        checkpoint["vlbert_config"] = config_data(self.config)
        checkpoint["vlbert_files"] = self.model_files()
        checkpoint["vlbert_init"] = self.initialised_from
        checkpoint["vlbert_card"] = self.card_record()
        datamodule = self._datamodule()
        if datamodule is not None:
            checkpoint["vlbert_features"] = datamodule.feature_header
            checkpoint["vlbert_tokenizer"] = str(datamodule.tokenizer.name_or_path)
            checkpoint["vlbert_vocabulary"] = vocabulary_fingerprint(datamodule.tokenizer)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "vlbert_job" not in checkpoint:
            upgrade_legacy(checkpoint, "the checkpoint")
        if checkpoint["vlbert_job"] != self.job:
            raise InputError(f"this is a `vlbert {checkpoint['vlbert_job']}` checkpoint, not a `vlbert {self.job}` one")
        rng = checkpoint.get("vlbert_rng")
        if rng:
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(rng["cuda"])

    def on_validation_start(self) -> None:
        # at the start: ModelCheckpoint saves in on_validation_end before this module's hook runs
        if not self.trainer.sanity_checking:
            self.validated_at_step = self.trainer.global_step

    def card_record(self) -> dict:
        """What the model card needs that only the run knows (data, batch, progress, the last
        validation metrics), as plain data: checkpoints carry it as vlbert_card."""
        return training_record(self._trainer, self._trainer.datamodule if self._trainer is not None else None,
                               self.validated_at_step)

    def model_card(self) -> str:
        """README.md of the model directory as it is now; `vlbert export` of a checkpoint saved in this
        state writes the same (vlbert.training.model_card)."""
        datamodule = self._datamodule()
        return model_card(card_facts(
            self.job, type(self.model).__name__, config_data(self.config), dict(self.hparams), self.model_files(),
            self.card_record(), self.initialised_from, datamodule.feature_header if datamodule is not None else None,
            self.model.num_parameters(),
        ))

    def export(self, directory: str | Path) -> Path:
        """The model directory of the model as it is now, with the data's tokenizer and feature header
        and its model card."""
        datamodule = self._datamodule()
        return write_model_directory(
            directory, self.model,
            datamodule.tokenizer if datamodule is not None else None,
            datamodule.feature_header if datamodule is not None else None,
            self.model_files(),
            card=self.model_card(),
        )

    def on_fit_end(self) -> None:
        if self.export_dir and self.trainer.is_global_zero:
            log.info("exported the %s model to %s", self.job, self.export(self.export_dir))

