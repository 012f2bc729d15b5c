"""PretrainDataModule: caption annotations + a feature store -> pretraining batches."""
from __future__ import annotations

from functools import partial

from torch.utils.data import DataLoader

from vlbert.data.annotations import load_pairs
from vlbert.featstore import FeatureStoreError
from vlbert.pretraining.dataset import PretrainDataset, collate_pretrain
from vlbert.pretraining.objectives import Objectives
from vlbert.training.data import TrainingDataModule


class PretrainDataModule(TrainingDataModule):
    def __init__(
        self,
        features: str | list[str],
        train_annotations: str,
        tokenizer: str,
        val_annotations: str | None = None,
        image_id_format: str = "{image_id}",
        max_text_len: int = 40,
        max_regions: int = 100,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        bucket_by_length: bool = True,
        seed: int = 0,
        objectives: dict | None = None,
        max_tokens: int | None = None,
        pad_to_multiple_of: int = 1,
        object_tags: bool = False,
        max_tags: int = 20,
    ) -> None:
        """
        Args:
            features: HDF5 feature file(s) or a directory of shards (vlbert extract / synth).
            train_annotations: caption pairs, JSONL ({"image_id", "caption"}) or COCO captions JSON.
            tokenizer: HF tokenizer name or local directory.
            val_annotations: held-out caption pairs for validation metrics.
            image_id_format: maps annotation image ids to feature-store ids.
            max_text_len: captions are truncated to this many tokens ([CLS] and [SEP] included).
            max_regions: at most this many regions per image (the detector's first, highest-scoring).
            batch_size: examples per device per step.
            num_workers: DataLoader worker processes.
            bucket_by_length: group captions of similar length into batches (less padding).
            seed: masking / negative sampling / shuffling seed.
            objectives: the model's objectives (the CLI links them; default: Objectives()).
            max_tokens: training batches of up to this many text + region tokens (examples x the
                longest; UNITER's dynamic batching) instead of batch_size examples; the schedule
                counts these batches. Regions are the caption's own image's: an ITM negative
                brings another image's count. One device only (not DDP). Validation keeps
                val_batch_size / batch_size.
            pad_to_multiple_of: pad each batch's text and region lengths up to a multiple of this
                (fewer distinct shapes for compiled and cuDNN kernels; 1: no rounding).
            object_tags: append the regions' detector class names to the caption as a third segment,
                `[CLS] caption [SEP] tags [SEP]`, token type 2 (Oscar); MLM then masks tags too.
                Needs the class names in the feature store; objectives.tag_contrastive needs this.
            max_tags: at most this many tag tokens (whole class names, first regions first).
        """
        longest = max_text_len + (max_tags + 1 if object_tags else 0) + max_regions
        if max_tokens is not None and max_tokens < longest:
            tags = " + max_tags + 1" if object_tags else ""
            raise ValueError(f"max_tokens {max_tokens} must hold the longest example: max_text_len{tags} + max_regions "
                             f"= {longest}")
        if pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        super().__init__()
        self.save_hyperparameters()
        self.objectives = Objectives(**objectives) if isinstance(objectives, dict) else (objectives or Objectives())
        self.tokenizer = None
        self.store = None

    def setup(self, stage: str | None = None) -> None:
        if self.store is not None:
            return
        hp = self.hparams
        self.open_inputs()
        self.datasets = {}
        for split, path in (("train", hp.train_annotations), ("val", hp.val_annotations)):
            if path is None:
                continue
            pairs = load_pairs(path, hp.image_id_format)
            self.store.check_ids([p.image_id for p in pairs], f"{split} annotations {path}")
            self.datasets[split] = PretrainDataset(
                pairs, self.store, self.tokenizer, self.objectives, hp.max_text_len, hp.max_regions, hp.seed,
                hp.pad_to_multiple_of, self.tags,
            )
        if self.objectives.needs_class_probs and not self.store.has_class_probs:
            raise FeatureStoreError(
                "objectives.mrc_kl > 0 needs the detector's class distributions, but the feature store has no "
                "class_probs; set objectives.mrc_kl: 0 (and use mrc with labels, or mrfr only)"
            )
        if self.objectives.needs_class_labels and self.store.num_classes == 0:
            raise FeatureStoreError("objectives.mrc > 0 needs detector class labels; the feature store has none: set objectives.mrc: 0")

    def _loader(self, split: str, train: bool) -> DataLoader:
        hp = self.hparams
        dataset = self.datasets[split]
        objectives = self.objectives
        if train and objectives.mixing == "sample":
            tasks, weights = objectives.enabled(), [objectives.weights()[t] for t in objectives.enabled()]
        elif train:
            tasks, weights = ["mix"], None
        else:
            tasks, weights = objectives.enabled(), None
        budget = hp.max_tokens if train else None
        if budget is not None:
            lengths = dataset.token_lengths()
        else:
            lengths = dataset.text_lengths() if (train and hp.bucket_by_length) else None
        collate = partial(collate_pretrain, pad_token_id=self.tokenizer.pad_token_id, pad_to_multiple_of=hp.pad_to_multiple_of)
        return self.task_loader(
            dataset, collate, train, batch_size=hp.batch_size if train else (hp.val_batch_size or hp.batch_size),
            tasks=tasks, weights=weights, lengths=lengths, max_tokens=budget,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", train=False) if "val" in self.datasets else []
