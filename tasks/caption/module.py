"""CaptionModule: the LightningModule that fine-tunes VLBertForCaptioning (steps, logging, optimiser).

Validation and test caption every image of their split (greedy or beam search, `decoding`) and
log the COCO caption metrics x 100 (`val/cider`, `val/bleu4`, ...); predict writes the COCO
results file ``[{"image_id", "caption"}, ...]``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from vlbert.errors import InputError, OutputExists
from vlbert.modeling import ModelSettings, VLBertForCaptioning
from vlbert.modeling.caption import CAPTION_INPUTS_FILE, CAPTION_OBJECTIVES
from vlbert.training.base import TrainingModule, as_dataclass, as_settings, build_model
from vlbert.training.optim import Optimization, build_optimizer

from .decoding import Decoding, caption_texts, generate
from .metric import METRICS, TOKENIZATIONS, caption_scores

log = logging.getLogger(__name__)

# logged names of pycocoevalcap's metrics (values x 100, as papers report them)
LOGGED = {"Bleu_1": "bleu1", "Bleu_2": "bleu2", "Bleu_3": "bleu3", "Bleu_4": "bleu4", "METEOR": "meteor",
          "ROUGE_L": "rouge_l", "CIDEr": "cider", "SPICE": "spice"}


def objective_of(init_from: str | None) -> str | None:
    """The captioning objective a model directory was fine-tuned with; None when it is no captioning model."""
    config = Path(init_from or "") / "config.json"
    return json.loads(config.read_text()).get("caption_objective") if init_from and config.is_file() else None


class CaptionModule(TrainingModule):
    job = "caption"
    output_arguments = ("export_dir", "results_file")

    def __init__(
        self,
        model: ModelSettings = ModelSettings(),
        init_from: str | None = None,
        bert: str | None = None,
        objective: str | None = None,
        load_head: bool = True,
        decoding: Decoding = Decoding(),
        val_metrics: list[str] = ["BLEU", "ROUGE_L", "CIDEr"],
        test_metrics: list[str] = list(METRICS),
        tokenization: str = "auto",
        optimization: Optimization = Optimization(lr=1e-4),
        dropout: float | None = None,
        export_dir: str | None = None,
        results_file: str | None = None,
    ) -> None:
        """
        Args:
            model: model sizes, used only when the encoder starts untrained (neither init_from nor bert).
            init_from: a vlbert model directory: a pretrained model (its encoder and MLM head are
                loaded), or a fine-tuned captioning model.
            bert: a HF BERT checkpoint (local directory) for the text encoder; the region layers start new.
            objective: "masked" (Oscar / VLP: predict masked caption tokens under the seq2seq mask;
                decode by appending [MASK]) or "next_token" (teacher forcing). Saved in the model's
                config (caption_objective), which decoding follows. Default: init_from's when it is
                a captioning model, else "masked". validate / test / predict refuse one that differs
                from init_from's (its captions would be decoded by the wrong rule).
            load_head: keep init_from's MLM head (the word predictor); false starts it new.
            decoding: beam size, maximum length and length penalty of validate / test / predict.
            val_metrics: metrics logged at validation (of BLEU, METEOR, ROUGE_L, CIDEr, SPICE);
                METEOR loads for ~10 s per evaluation, so validation leaves it out by default.
            test_metrics: metrics logged by `test`; METEOR and SPICE are skipped, with a note, where
                Java (or SPICE's CoreNLP) is absent.
            tokenization: caption tokenization before scoring: "auto" (pycocoevalcap's PTB tokenizer
                when java is present, else vlbert's simple one), "ptb" or "simple".
            optimization: AdamW and the warm-up / linear-decay schedule.
            dropout: when set, replaces the hidden and attention dropout however the model was initialised.
            export_dir: when set, the fine-tuned model directory is written there when fit ends.
            results_file: where `predict` writes the COCO results JSON (default:
                <trainer.default_root_dir>/caption_results.json); an existing file is never overwritten.
        """
        super().__init__(export_dir)
        self.loaded_objective = objective_of(init_from)
        objective = objective or self.loaded_objective or "masked"
        if objective not in CAPTION_OBJECTIVES:
            raise InputError(f"model.objective must be one of {CAPTION_OBJECTIVES}, got {objective!r}")
        for key, metrics in (("val_metrics", val_metrics), ("test_metrics", test_metrics)):
            unknown = sorted(set(metrics) - set(METRICS))
            if unknown:
                raise InputError(f"model.{key}: unknown metric(s) {unknown}; choose from {list(METRICS)}")
        if tokenization not in TOKENIZATIONS:
            raise InputError(f"model.tokenization must be one of {TOKENIZATIONS}, got {tokenization!r}")
        fine_tuning = {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
        self.model = build_model(VLBertForCaptioning, as_settings(model), bert, init_from, keep_heads=load_head,
                                 caption_objective=objective, **fine_tuning)
        self.freeze_mask_embedding()
        self.model.vlbert.pooler.requires_grad_(False)  # captioning reads no pooled output (DDP: no unused parameter)
        self.decoding = as_dataclass(Decoding, decoding)
        self.val_metrics, self.test_metrics, self.tokenization = list(val_metrics), list(test_metrics), tokenization
        self.optimization = as_dataclass(Optimization, optimization)
        self.results_file = results_file
        self.tokenizer = None
        self.inputs: dict[str, int] = {}
        self._captions: list[tuple] = []
        self.last_scores = None
        self.record_hyperparameters(init_from=init_from, bert=bert, objective=objective, load_head=load_head,
                                    decoding=self.decoding, val_metrics=self.val_metrics, test_metrics=self.test_metrics,
                                    tokenization=tokenization, optimization=self.optimization, dropout=dropout)

    def check_data(self, datamodule, stage: str) -> None:
        if stage != "fit" and self.loaded_objective not in (None, self.model.objective):
            raise InputError(f"model.objective is {self.model.objective!r} but model.init_from was fine-tuned with "
                             f"{self.loaded_objective!r}, whose captions are decoded differently; pass --model.objective "
                             f"{self.loaded_objective} (or null: the model's own)")
        if datamodule.hparams.objective != self.model.objective:
            raise InputError(f"data.objective {datamodule.hparams.objective!r} differs from the model's "
                             f"{self.model.objective!r}; `vlbert caption` links them")
        self.tokenizer = datamodule.tokenizer  # decoding turns ids into words with the data's tokenizer
        self.inputs = {k: datamodule.hparams[k] for k in ("max_text_len", "max_regions")}

    def model_files(self) -> dict[str, dict | list]:
        return {CAPTION_INPUTS_FILE: {**self.inputs, "objective": self.model.objective,
                                      "decoding": vars(self.decoding)}}

    def output_paths(self, stage: str, root_dir: str) -> dict[str, tuple[Path, bool]]:
        if stage == "predict":
            return {"model.results_file": (self._results_path(root_dir), False)}
        return super().output_paths(stage, root_dir)

    # -- steps ------------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        output = self.model(batch["input_ids"], batch["text_mask"], batch["region_features"], batch["region_locations"],
                            batch["region_mask"], labels=batch["labels"])
        batch_size = len(batch["input_ids"])
        self.log("train/loss", output.loss, prog_bar=True, batch_size=batch_size)
        self.log("train/token_acc", output.accuracy, batch_size=batch_size)
        return output.loss

    def caption_batch(self, batch: dict) -> list[str]:
        """Captions of a batch of images, by `decoding`."""
        if self.tokenizer is None:
            raise RuntimeError("the caption module decodes with its datamodule's tokenizer: run it with a CaptionDataModule")
        decoded = generate(self.model, batch, self.tokenizer, self.decoding)
        return caption_texts(decoded.tokens, self.tokenizer)

    def _eval_step(self, batch: dict) -> list[dict]:
        images = batch["images"]
        rows = [{"row": row, "image_id": result_id, "caption": caption, "references": refs}
                for row, result_id, refs, caption in zip(images.rows, images.result_ids, images.references, self.caption_batch(batch))]
        self._captions.extend(rows)
        return rows

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def _gather(self, items: list) -> list:
        if self.trainer.world_size > 1:
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, items)
            return [item for part in gathered for item in part]
        return items

    def _log_scores(self, stage: str, metrics: list[str]) -> None:
        rows, self._captions = self._captions, []
        if self.trainer.sanity_checking or not rows:
            return
        unique = {row["row"]: row for row in self._gather(rows)}  # a distributed sampler may repeat some
        ordered = [unique[row] for row in sorted(unique)]
        scores = caption_scores({r["image_id"]: r["references"] for r in ordered},
                                {r["image_id"]: r["caption"] for r in ordered}, metrics, self.tokenization)
        for note in scores.notes:
            log.warning("%s metrics: %s", stage, note)
        self.last_scores = scores
        for name, value in scores.scores.items():
            self.log(f"{stage}/{LOGGED[name]}", 100.0 * value, prog_bar=name == "CIDEr", sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_scores("test", self.test_metrics)

    # -- predict ----------------------------------------------------------------------------

    def _results_path(self, root_dir: str | None = None) -> Path:
        return Path(self.results_file or os.path.join(root_dir or self.trainer.default_root_dir, "caption_results.json"))

    def on_predict_start(self) -> None:
        path = self._results_path()
        if path.exists():
            raise OutputExists(f"model.results_file: {path} already exists; choose another path (it is never overwritten)")
        self._captions = []

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        return self._eval_step(batch)

    def on_predict_epoch_end(self) -> None:
        rows, self._captions = self._gather(self._captions), []
        if not self.trainer.is_global_zero:
            return
        unique = {row["row"]: row for row in rows}
        results = [{"image_id": unique[row]["image_id"], "caption": unique[row]["caption"]} for row in sorted(unique)]
        path = self._results_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(results))
        os.replace(tmp, path)
        log.info("wrote %d captions to %s", len(results), path)

    def configure_optimizers(self):
        return build_optimizer(self, self.optimization)
