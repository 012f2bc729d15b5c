"""VQADataModule: official VQA question / annotation files + a feature store -> VQA batches.

The answer vocabulary is built once and passed to both the model (it sizes the head) and this
datamodule (it builds the targets): `vlbert vqa` links the model's to the data; from Python, pass
``answers=module.vocab``. `vocab_from_annotations` builds one from training annotations.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader

from vlbert.errors import InputError
from vlbert.featstore import FeatureStore
from vlbert.tasks.vqa.answers import AnswerVocab
from vlbert.tasks.vqa.data import (
    COCO_FEATURE_ID,
    VQAExample,
    answer_targets,
    build_answer_vocab,
    load_vqa,
    select_for_training,
)
from vlbert.tasks.vqa.dataset import VQADataset, collate_vqa
from vlbert.training.data import TrainingDataModule

SPLITS = ("train", "val", "test", "predict")


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class VQADataModule(TrainingDataModule):
    def __init__(
        self,
        features: str | list[str],
        tokenizer: str,
        train_questions: str | list[str] | None = None,
        train_annotations: str | list[str] | None = None,
        val_questions: str | None = None,
        val_annotations: str | None = None,
        test_questions: str | None = None,
        test_annotations: str | None = None,
        predict_questions: str | None = None,
        feature_id_format: str = COCO_FEATURE_ID,
        min_answer_count: int = 9,
        count_answers_by: str = "human",
        train_fraction: float = 1.0,
        keep_unanswerable: bool = False,
        max_text_len: int = 40,
        max_regions: int = 100,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        seed: int = 0,
        answers: AnswerVocab | None = None,
        object_tags: bool = False,
        max_tags: int = 20,
    ) -> None:
        """
        Args:
            features: HDF5 feature file(s) or a directory of shards.
            tokenizer: HF tokenizer name or local directory (the one the encoder was trained with).
            train_questions: official question file(s) for training (several: e.g. train + val2014).
            train_annotations: their annotation file(s), in the same order.
            val_questions: question file scored during fit and by `validate`.
            val_annotations: its annotations (needed for accuracy).
            test_questions: question file scored by `test`.
            test_annotations: its annotations.
            predict_questions: question file answered by `predict` (annotations not needed: test-dev).
            feature_id_format: VQA image id -> feature-store id; "COCO_{data_subtype}_{image_id:012d}"
                for COCO features from `vlbert extract`, "{image_id}" for the synthetic world.
            min_answer_count: an answer joins the vocabulary built from the training annotations when
                counted at least this often (9 is the usual choice on VQA v2).
            count_answers_by: "human" (each of the 10 human answers counts) or "majority" (each question
                counts once, for its multiple_choice_answer: the Bottom-Up/UNITER way, 3129 answers on
                VQA v2 train+val at 9).
            train_fraction: train on this random fraction of the training questions (seeded); the
                vocabulary is still built from all of them.
            keep_unanswerable: also train on questions none of whose answers is in the vocabulary
                (their target is all zeros). Evaluation always keeps every question.
            max_text_len: questions are truncated to this many tokens ([CLS], [SEP] included).
            max_regions: at most this many regions per image.
            batch_size: questions per device per training step.
            val_batch_size: questions per batch for validate / test / predict (default batch_size).
            num_workers: DataLoader worker processes.
            seed: shuffling and train_fraction sampling seed.
            answers: the model's answer vocabulary (`vlbert vqa` passes it from the model).
            object_tags: append the regions' detector class names to each question,
                `[CLS] question [SEP] tags [SEP]`, token type 2, as Oscar pretraining does (use it for
                an encoder pretrained with data.object_tags). Needs class names in the feature store.
            max_tags: at most this many tag tokens (whole class names, first regions first).
        """
        super().__init__()
        self.save_hyperparameters(ignore=["answers"])
        if not 0 < train_fraction <= 1:
            raise InputError(f"data.train_fraction must be in (0, 1], got {train_fraction}")
        if len(_as_list(train_questions)) != len(_as_list(train_annotations)):
            raise InputError(
                f"data.train_questions has {len(_as_list(train_questions))} file(s) but data.train_annotations "
                f"{len(_as_list(train_annotations))}; give one annotation file per question file, in the same order"
            )
        self.tokenizer = None
        self.store: FeatureStore | None = None
        self.examples: dict[str, list[VQAExample]] = {}
        self.vocab = answers
        self._datasets: dict[str, tuple[AnswerVocab | None, VQADataset]] = {}

    def _load_split(self, split: str) -> list[VQAExample]:
        hp = self.hparams
        fmt = hp.feature_id_format
        if split == "train":
            examples = []
            for questions, annotations in zip(_as_list(hp.train_questions), _as_list(hp.train_annotations)):
                examples += load_vqa(questions, annotations, fmt)
            return examples
        questions = getattr(hp, f"{split}_questions")
        annotations = getattr(hp, f"{split}_annotations", None)
        if questions is None:
            return []
        if split in ("val", "test") and annotations is None:
            raise InputError(f"data.{split}_questions is set but data.{split}_annotations is not: "
                             f"accuracy needs the answers (use predict for questions without annotations)")
        return load_vqa(questions, annotations, fmt)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        self.open_inputs()
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        # Each stage loads the splits it needs (fit then test on one datamodule loads test then).
        for split in needed.get(stage, SPLITS):
            if split in self.examples:
                continue
            self.examples[split] = self._load_split(split)
            if self.examples[split]:
                self.store.check_ids(
                    [e.feature_id for e in self.examples[split]],
                    f"the {split} questions (feature ids made with data.feature_id_format={hp.feature_id_format!r})",
                )
        if stage == "fit" and not self.examples["train"]:
            raise InputError("vqa fit needs training questions: set data.train_questions and data.train_annotations")
        for split in needed.get(stage, ()):
            if not self.examples[split] and split != "val":
                raise InputError(f"vqa {stage} needs data.{split}_questions")

    def dataset(self, split: str) -> VQADataset:
        """The split's dataset, with soft targets against the current vocabulary where answers exist."""
        cached = self._datasets.get(split)
        if cached is not None and cached[0] is self.vocab:
            return cached[1]
        if self.vocab is None:
            raise InputError("the VQA data needs the model's answer vocabulary: VQADataModule(answers=module.vocab)")
        examples = self.examples.get(split) or []
        if not examples:
            raise InputError(f"no {split} questions: set data.{split}_questions")
        hp = self.hparams
        targets = answer_targets(examples, self.vocab) if split != "predict" else None
        if split == "train":
            if hp.train_fraction < 1:
                order = np.random.default_rng(hp.seed).permutation(len(examples))
                keep = np.sort(order[: max(1, int(round(hp.train_fraction * len(examples))))])
                examples, targets = [examples[i] for i in keep], [targets[i] for i in keep]
            examples, targets = select_for_training(examples, targets, hp.keep_unanswerable)
            if not examples:
                raise InputError(f"no training question has an answer in the vocabulary of {len(self.vocab)} answers")
        dataset = VQADataset(examples, self.store, self.tokenizer, targets, hp.max_text_len, hp.max_regions, self.tags)
        self._datasets[split] = (self.vocab, dataset)
        return dataset

    def _loader(self, split: str, train: bool) -> DataLoader:
        hp = self.hparams
        dataset = self.dataset(split)
        return DataLoader(
            dataset,
            batch_size=hp.batch_size if train else (hp.val_batch_size or hp.batch_size),
            shuffle=train,
            num_workers=hp.num_workers,
            collate_fn=partial(collate_vqa, pad_token_id=self.tokenizer.pad_token_id, num_answers=len(self.vocab)),
            persistent_workers=train and hp.num_workers > 0,
            generator=torch.Generator().manual_seed(hp.seed) if train else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", train=False) if self.examples.get("val") else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", train=False)


def vocab_from_annotations(questions: str | list[str], annotations: str | list[str], feature_id_format: str = COCO_FEATURE_ID,
                           min_count: int = 9, count_by: str = "human") -> AnswerVocab:
    """An answer vocabulary from training question / annotation files (one annotation file per
    question file), for a model that has none yet."""
    questions, annotations = _as_list(questions), _as_list(annotations)
    if not questions or len(questions) != len(annotations):
        raise InputError("building an answer vocabulary needs the training questions and their annotations "
                         "(data.train_questions / data.train_annotations), or pass model.answers")
    examples = [e for q, a in zip(questions, annotations) for e in load_vqa(q, a, feature_id_format)]
    return build_answer_vocab(examples, min_count, count_by)
