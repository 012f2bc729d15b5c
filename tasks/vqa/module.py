"""VQAModule: the LightningModule that fine-tunes the encoder and a VQA head.

Validation / test report the official VQA accuracy (overall and per answer type) of the top
answer; predict writes the official result file ``[{"question_id", "answer"}, ...]``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import lightning as L
import torch

from vlbert.modeling.config import VLBertConfig
from vlbert.modeling.model import VLBertModel, load_encoder_state
from vlbert.modeling.pretrained import load_bert_into, load_complete_state, load_pretrained, load_submodule_state
from vlbert.pretraining.module import Optimization, as_dataclass, build_optimizer
from vlbert.tasks.vqa.answers import AnswerVocab
from vlbert.tasks.vqa.metric import evaluate_examples
from vlbert.tasks.vqa.model import VQAHead, head_state_of, save_vqa_directory, vqa_loss

log = logging.getLogger(__name__)

# Fields of VLBertConfig that describe the region branch (kept when sizes come from a BERT checkpoint).
_REGION_FIELDS = ("region_feature_dim", "region_location_dim", "region_embedding", "num_region_classes", "gradient_checkpointing")


class VQAModule(L.LightningModule):
    def __init__(
        self,
        model: VLBertConfig = VLBertConfig(),
        init_from: str | None = None,
        bert: str | None = None,
        answers: str | list[str] | None = None,
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
                or the list of answers. Default: the init_from directory's, else one built from the
                training annotations.
            load_head: keep the VQA head of init_from (when it has one over the same answers).
            optimization: AdamW and the warm-up / linear-decay schedule.
            head_lr_multiplier: the head's learning rate is lr times this (UNITER: 10).
            export_dir: when set, the fine-tuned model directory (with answers.json) is written there
                when fit ends.
            results_file: where `predict` writes the official result JSON (default:
                <trainer.default_root_dir>/vqa_results.json); an existing file is never overwritten.
        """
        super().__init__()
        model, optimization = as_dataclass(VLBertConfig, model), as_dataclass(Optimization, optimization)
        state: dict[str, torch.Tensor] = {}
        if init_from and bert:
            raise ValueError("model.init_from and model.bert are alternatives; set one")
        if init_from:
            config, state = load_pretrained(init_from)
            self.vlbert = VLBertModel(config)
            load_encoder_state(self.vlbert, state, init_from)
        elif bert:
            region = {name: getattr(model, name) for name in _REGION_FIELDS}
            self.vlbert = VLBertModel(VLBertConfig.from_bert(bert, **region))
            report = load_bert_into(self.vlbert, bert)
            log.info("text encoder from BERT %s; new: %s", bert, report["missing"])
        else:
            self.vlbert = VLBertModel(model)
        # fine-tuning masks no regions: the pretraining-only mask vector stays as loaded (and DDP
        # sees no parameter without a gradient)
        self.vlbert.region_embeddings.mask_embedding.requires_grad_(False)
        self.config: VLBertConfig = self.vlbert.config

        vocab = (AnswerVocab(answers) if isinstance(answers, (list, tuple)) else AnswerVocab.load(answers)) if answers else None
        head_state: dict[str, torch.Tensor] = {}
        if init_from and load_head:
            stored_vocab, head_state = head_state_of(init_from, state)
            if stored_vocab is not None and vocab is None:
                vocab = stored_vocab
            elif stored_vocab is not None and vocab != stored_vocab:
                log.warning("%s has a VQA head over other answers than %s: starting a new head", init_from, answers)
                head_state = {}
        self.vocab: AnswerVocab | None = None
        self.vqa_head: VQAHead | None = None
        if vocab is not None:
            self.set_vocab(vocab)
            if head_state:
                load_submodule_state(self.vqa_head, head_state, "vqa_head.", strict=True)
                log.info("kept the VQA head of %s (%d answers)", init_from, len(vocab))

        self.optimization = optimization
        self.head_lr_multiplier = head_lr_multiplier
        self.export_dir = export_dir
        self.results_file = results_file
        self._outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._predictions: list[dict] = []
        self.initialised_from = {"init_from": init_from, "bert": bert, "answers": answers if isinstance(answers, str) else None}
        # The hparams rebuild this module for a checkpoint (LightningCLI re-applies them with
        # --ckpt_path): the config actually built and the answers themselves, not the files they
        # came from (the weights are in the checkpoint; the origin is kept as "vqa_init").
        # export_dir and results_file say where a run writes: a restored run must not inherit them.
        self.save_hyperparameters(
            {
                "model": self.config.to_dict(),
                "init_from": None,
                "bert": None,
                "answers": self.vocab.answers if self.vocab is not None else None,
                "load_head": load_head,
                "optimization": dataclasses.asdict(optimization),
                "head_lr_multiplier": head_lr_multiplier,
            }
        )

    # ------------------------------------------------------------------ vocabulary and head

    def set_vocab(self, vocab: AnswerVocab) -> None:
        """Use `vocab` and give the model a new head over it (unless it already has that vocabulary)."""
        if self.vocab is not None and self.vocab == vocab and self.vqa_head is not None:
            return
        self.vocab = vocab
        self.vqa_head = VQAHead(self.config, len(vocab))
        if "answers" in self.hparams:
            self.hparams["answers"] = vocab.answers
        datamodule = self._datamodule()
        if datamodule is not None:
            datamodule.vocab = vocab

    def _datamodule(self):
        trainer = self._trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    def setup(self, stage: str) -> None:
        datamodule = self._datamodule()
        if datamodule is None or datamodule.store is None:
            if self.vocab is None:
                raise ValueError("the VQA model has no answer vocabulary: pass model.answers or model.init_from")
            return
        if self.vocab is None:
            self.set_vocab(datamodule.build_vocab())
            log.info("answer vocabulary: %d answers from the training annotations", len(self.vocab))
        datamodule.vocab = self.vocab
        datamodule.store.check_feature_dim(self.config.region_feature_dim, "model.model.region_feature_dim")
        if len(datamodule.tokenizer) > self.config.vocab_size:
            raise ValueError(
                f"the tokenizer has {len(datamodule.tokenizer)} tokens but the encoder's vocab_size is "
                f"{self.config.vocab_size}; use the tokenizer the encoder was trained with, or set model.model.vocab_size"
            )

    # ------------------------------------------------------------------ steps

    def forward(self, batch: dict) -> torch.Tensor:
        """Answer logits [B, A] of a collated batch."""
        output = self.vlbert(batch["input_ids"], batch["text_mask"], batch["region_features"], batch["region_locations"], batch["region_mask"])
        return self.vqa_head(output.pooled_output)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        loss = vqa_loss(logits, batch["targets"])
        # The soft score of the top answer: the training-set VQA accuracy (answers in the vocabulary).
        score = batch["targets"].gather(1, logits.argmax(-1, keepdim=True)).mean()
        batch_size = len(batch["input_ids"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/vqa_score", score, batch_size=batch_size)
        return loss

    def _eval_step(self, stage: str, batch: dict) -> None:
        logits = self(batch)
        if "targets" in batch:
            self.log(f"{stage}/loss", vqa_loss(logits, batch["targets"]), batch_size=len(logits), sync_dist=True)
        self._outputs.append((batch["index"].cpu(), logits.argmax(-1).cpu()))

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
        pairs = self._gather([(int(i), int(p)) for index, pred in outputs for i, p in zip(index, pred)])
        examples = self.trainer.datamodule.dataset(stage).examples
        predictions = {examples[i].question_id: self.vocab[p] for i, p in pairs}
        scored = [e for e in examples if e.question_id in predictions]
        if len(scored) < len(examples):
            log.warning("%s accuracy over %d of %d questions (limited batches)", stage, len(scored), len(examples))
        accuracy = evaluate_examples(scored, predictions)
        self.log(f"{stage}/vqa_acc", accuracy.overall, prog_bar=True, sync_dist=False)
        for answer_type, value in accuracy.per_answer_type.items():
            self.log(f"{stage}/vqa_acc_{answer_type.replace('/', '_')}", value, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val")

    def on_test_epoch_end(self) -> None:
        self._log_accuracy("test")

    # ------------------------------------------------------------------ predict

    def _results_path(self) -> Path:
        return Path(self.results_file or os.path.join(self.trainer.default_root_dir, "vqa_results.json"))

    def on_predict_start(self) -> None:
        path = self._results_path()
        if path.exists():
            raise FileExistsError(f"{path} already exists; choose another --model.results_file (it is never overwritten)")
        self._predictions = []

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        scores = torch.sigmoid(self(batch).float())
        best, answer = scores.max(-1)
        examples = self.trainer.datamodule.dataset("predict").examples
        rows = [
            {"question_id": examples[int(i)].question_id, "answer": self.vocab[int(a)], "score": float(s)}
            for i, a, s in zip(batch["index"], answer, best)
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

    # ------------------------------------------------------------------ optimisation, checkpoints, export

    def configure_optimizers(self):
        """AdamW with warm-up and linear decay; the head at lr * head_lr_multiplier (UNITER: 10x)."""
        return build_optimizer(self, self.optimization, [(self.vlbert, 1.0), (self.vqa_head, self.head_lr_multiplier)])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vqa_answers"] = self.vocab.to_dict()
        checkpoint["vqa_init"] = self.initialised_from
        datamodule = self._datamodule()
        if datamodule is not None and datamodule.store is not None:
            checkpoint["vlbert_features"] = datamodule.feature_header
            checkpoint["vlbert_tokenizer"] = str(datamodule.hparams.tokenizer)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Runs before the weights load: size the head for the checkpoint's answers.
        stored = checkpoint.get("vqa_answers")
        if stored is None:
            raise ValueError("this checkpoint has no VQA answer vocabulary; it is not a `vlbert vqa` checkpoint")
        self.set_vocab(AnswerVocab(stored["answers"], stored.get("counts"), stored.get("min_count"), stored.get("count_by")))

    def save_pretrained(self, directory: str | os.PathLike, tokenizer=None, features_header: dict | None = None,
                        inputs: dict | None = None) -> Path:
        """A fine-tuned model directory: encoder, head, answers.json, vqa.json (loads with VLBertForVQA.from_pretrained)."""
        return save_vqa_directory(directory, self, tokenizer, features_header, inputs)

    def on_fit_end(self) -> None:
        if self.export_dir and self.trainer.is_global_zero:
            datamodule = self.trainer.datamodule
            self.save_pretrained(self.export_dir, datamodule.tokenizer, datamodule.feature_header, dict(datamodule.hparams))
            log.info("exported the VQA model to %s", self.export_dir)


def export_checkpoint(checkpoint_path: str | os.PathLike, out_dir: str | os.PathLike, tokenizer: str | None = None) -> Path:
    """A `vlbert vqa fit` Lightning checkpoint -> a fine-tuned VQA model directory."""
    from vlbert.data.tokenizer import load_tokenizer
    from vlbert.tasks.vqa.model import VLBertForVQA

    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    stored = checkpoint.get("vqa_answers")
    if stored is None or "state_dict" not in checkpoint:
        raise ValueError(f"{checkpoint_path} is not a `vlbert vqa` checkpoint (no answer vocabulary / state_dict)")
    config = VLBertConfig.from_dict(checkpoint["hyper_parameters"]["model"])
    model = VLBertForVQA(config, AnswerVocab(stored["answers"], stored.get("counts"), stored.get("min_count"), stored.get("count_by")))
    load_complete_state(model, checkpoint["state_dict"], "", checkpoint_path)
    source = tokenizer or checkpoint.get("vlbert_tokenizer")
    return model.save_pretrained(out_dir, load_tokenizer(source) if source else None, checkpoint.get("vlbert_features"),
                                 checkpoint.get("datamodule_hyper_parameters"))
