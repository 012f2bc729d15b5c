"""VQAModule: the LightningModule that fine-tunes VLBertForVQA (steps, logging, optimiser).

Validation / test report the official VQA accuracy (overall and per answer type) of the top
answer; predict writes the official result file ``[{"question_id", "answer"}, ...]``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from vlbert.errors import InputError, OutputExists
from vlbert.modeling import ModelSettings, VLBertForVQA
from vlbert.modeling.vqa import ANSWERS_FILE, INPUTS_FILE, answers_of
from vlbert.tasks.vqa.answers import AnswerVocab
from vlbert.tasks.vqa.metric import evaluate_examples
from vlbert.training.base import TrainingModule, as_dataclass, as_settings, build_model
from vlbert.training.optim import Optimization, build_optimizer

log = logging.getLogger(__name__)



def answer_vocab(answers: str | list[str] | dict | AnswerVocab | None, init_from: str | None = None,
                 load_head: bool = True) -> AnswerVocab | None:
    """The vocabulary a VQA model is built over: `answers` (a file, a list, or a vocabulary's
    dict), else that of the fine-tuned VQA model in `init_from` (with `load_head`), else None."""
    if isinstance(answers, AnswerVocab):
        return answers
    if isinstance(answers, dict) and "answers" in answers:
        return AnswerVocab(answers["answers"], answers.get("counts"), answers.get("min_count"), answers.get("count_by"))
    if isinstance(answers, (list, tuple)):
        return AnswerVocab(answers)
    if answers:
        return AnswerVocab.load(answers)
    if init_from and load_head:
        path = Path(init_from) / ANSWERS_FILE
        if path.is_file():
            return AnswerVocab.load(path)
    return None


class VQAModule(TrainingModule):
    job = "vqa"
    output_arguments = ("export_dir", "results_file")

    def __init__(
        self,
        model: ModelSettings = ModelSettings(),
        init_from: str | None = None,
        bert: str | None = None,
        answers: str | list[str] | dict | None = None,
        load_head: bool = True,
        optimization: Optimization = Optimization(lr=8e-5),
        head_lr_multiplier: float = 10.0,
        export_dir: str | None = None,
        results_file: str | None = None,
    ) -> None:
        """
        Args:
            model: model sizes, used only when the encoder starts untrained (neither init_from nor bert).
            init_from: a vlbert model directory: a pretrained encoder (vlbert pretrain / export /
                convert), or a fine-tuned VQA model whose head is kept when its answers match.
            bert: a HF BERT checkpoint (local directory) for the text encoder; the region layers start
                new, with the region settings of `model`.
            answers: the answer vocabulary: a file (answers.json, a JSON list or an ans2label object)
                or the list of answers. Default: the init_from directory's; `vlbert vqa` builds one
                from the training annotations when neither has one.
            load_head: keep the VQA head of init_from (when it has one over the same answers).
            optimization: AdamW and the warm-up / linear-decay schedule.
            head_lr_multiplier: the head's learning rate is lr times this (UNITER: 10).
            export_dir: when set, the fine-tuned model directory (with answers.json) is written there
                when fit ends.
            results_file: where `predict` writes the official result JSON (default:
                <trainer.default_root_dir>/vqa_results.json); an existing file is never overwritten.
        """
        super().__init__(export_dir)
        self.vocab = answer_vocab(answers, init_from, load_head)
        if self.vocab is None:
            raise InputError("the VQA model has no answer vocabulary: pass model.answers (a file or list), or "
                             "model.init_from a fine-tuned VQA model; `vlbert vqa fit` builds one from the training annotations")
        keep_head = bool(init_from) and load_head and answers_of(init_from) == self.vocab.answers
        if init_from and load_head and not keep_head and answers_of(init_from) is not None:
            log.warning("%s has a VQA head over other answers than %s: starting a new head", init_from, answers)
        self.model = build_model(VLBertForVQA, as_settings(model), bert, init_from, keep_heads=keep_head,
                                 id2label=dict(enumerate(self.vocab.answers)),
                                 label2id={a: i for i, a in enumerate(self.vocab.answers)})
        self.freeze_mask_embedding()
        self.optimization = as_dataclass(Optimization, optimization)
        self.head_lr_multiplier = head_lr_multiplier
        self.results_file = results_file
        self.inputs: dict[str, int] = {}
        self._outputs: list[tuple[list, list[int]]] = []
        self._predictions: list[dict] = []
        # the answers themselves, not the file they came from: a checkpoint rebuilds the same head
        self.record_hyperparameters(init_from=init_from, bert=bert, answers=self.vocab.answers, load_head=load_head,
                                    optimization=self.optimization, head_lr_multiplier=head_lr_multiplier)

    def check_data(self, datamodule, stage: str) -> None:
        if datamodule.vocab != self.vocab:
            raise InputError("the VQA data was built over other answers than the model's; pass the model's vocabulary "
                             "to the datamodule (VQADataModule(answers=module.vocab), as `vlbert vqa` does)")
        self.inputs = {k: datamodule.hparams[k] for k in ("max_text_len", "max_regions")}
        if datamodule.tags is not None:  # `vlbert answer` builds the same tags from the same names
            self.inputs.update(object_tags=True, max_tags=datamodule.tags.max_tags, class_names=datamodule.tags.class_names)

    def model_files(self) -> dict[str, dict | list]:
        return {ANSWERS_FILE: self.vocab.to_dict(), **({INPUTS_FILE: self.inputs} if self.inputs else {})}

    # -- steps ------------------------------------------------------------------------------

    def forward(self, batch: dict):
        return self.model(batch["input_ids"], batch["text_mask"], batch["region_features"], batch["region_locations"],
                          batch["region_mask"], targets=batch.get("targets"), token_type_ids=batch.get("token_type_ids"))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        output = self(batch)
        # The soft score of the top answer: the training-set VQA accuracy (answers in the vocabulary).
        score = batch["targets"].gather(1, output.logits.argmax(-1, keepdim=True)).mean()
        batch_size = len(batch["input_ids"])
        self.log("train/loss", output.loss, prog_bar=True, batch_size=batch_size)
        self.log("train/vqa_score", score, batch_size=batch_size)
        return output.loss

    def _eval_step(self, stage: str, batch: dict) -> None:
        output = self(batch)
        if output.loss is not None:
            self.log(f"{stage}/loss", output.loss, batch_size=len(output.logits), sync_dist=True)
        self._outputs.append((batch["examples"], output.logits.argmax(-1).tolist()))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _gather(self, items: list) -> list:
        if self.trainer.world_size > 1:
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, items)
            return [item for part in gathered for item in part]
        return items

    def _log_accuracy(self, stage: str) -> None:
        outputs, self._outputs = self._outputs, []
        if self.trainer.sanity_checking or not outputs:
            return
        pairs = self._gather([(example, self.vocab[p]) for examples, predicted in outputs for example, p in zip(examples, predicted)])
        examples = list({example.question_id: example for example, _ in pairs}.values())  # a distributed sampler may repeat some
        accuracy = evaluate_examples(examples, {example.question_id: answer for example, answer in pairs})
        self.log(f"{stage}/vqa_acc", accuracy.overall, prog_bar=True, sync_dist=False)
        for answer_type, value in accuracy.per_answer_type.items():
            self.log(f"{stage}/vqa_acc_{answer_type.replace('/', '_')}", value, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val")

    def on_test_epoch_end(self) -> None:
        self._log_accuracy("test")

    # -- predict ----------------------------------------------------------------------------

    def _results_path(self, root_dir: str | None = None) -> Path:
        return Path(self.results_file or os.path.join(root_dir or self.trainer.default_root_dir, "vqa_results.json"))

    def output_paths(self, stage: str, root_dir: str) -> dict[str, tuple[Path, bool]]:
        if stage == "predict":
            return {"model.results_file": (self._results_path(root_dir), False)}
        return super().output_paths(stage, root_dir)

    def on_predict_start(self) -> None:
        path = self._results_path()
        if path.exists():
            raise OutputExists(f"model.results_file: {path} already exists; choose another path (it is never overwritten)")
        self._predictions = []

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        scores = torch.sigmoid(self(batch).logits.float())
        best, answer = scores.max(-1)
        rows = [
            {"question_id": example.question_id, "answer": self.vocab[int(a)], "score": float(s)}
            for example, a, s in zip(batch["examples"], answer, best)
        ]
        self._predictions.extend(rows)
        return rows

    def on_predict_epoch_end(self) -> None:
        rows = self._gather(self._predictions)
        self._predictions = []
        if not self.trainer.is_global_zero:
            return
        unique = {row["question_id"]: row["answer"] for row in rows}  # a distributed sampler may repeat some
        results = [{"question_id": qid, "answer": answer} for qid, answer in unique.items()]
        path = self._results_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(results))
        os.replace(tmp, path)
        log.info("wrote %d answers to %s", len(results), path)
        print(f"wrote {len(results)} answers to {path}")

    def configure_optimizers(self):
        """AdamW with warm-up and linear decay; the head at lr * head_lr_multiplier (UNITER: 10x)."""
        return build_optimizer(self, self.optimization, [(self.model.vlbert, 1.0), (self.model.vqa_head, self.head_lr_multiplier)])
