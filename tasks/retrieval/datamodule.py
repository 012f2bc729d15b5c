"""RetrievalDataModule: Karpathy-split / JSONL annotations + a feature store -> training
batches with sampled negatives, and per-rank image blocks for all-pairs evaluation."""
from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from vlbert.data.samplers import EpochSampler, TaskBatchSampler, consumed_state, take_batch_position
from vlbert.data.tokenizer import load_tokenizer
from vlbert.featstore import FeatureStore

from .data import IMAGE_ID_SOURCES, RetrievalSplit, load_split
from .dataset import ImageBlocks, RetrievalTrainDataset, tokenize_captions
from .scoring import CaptionBank, distributed_world


class Evaluation:
    """What scoring a split needs besides its image blocks: the split, its captions tokenized once
    (`CaptionBank`) and this rank's image rows. Every evaluation batch carries it (a plain object:
    Lightning moves no tensor of it), so the model side reads nothing from the datamodule."""

    def __init__(self, stage: str, split: RetrievalSplit, captions: CaptionBank, rows: range) -> None:
        self.stage, self.split, self.captions, self.rows = stage, split, captions, rows


class EvaluationBatches:
    """The evaluation loader's image blocks, each with the `Evaluation` under "evaluation"."""

    def __init__(self, loader: DataLoader, evaluation: Evaluation) -> None:
        self.loader, self.evaluation = loader, evaluation

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for block in self.loader:
            yield {**block, "evaluation": self.evaluation}


class RetrievalDataModule(L.LightningDataModule):
    def __init__(
        self,
        annotations: str,
        features: str | list[str],
        tokenizer: str,
        train_splits: list[str] = ["train", "restval"],
        val_splits: list[str] = ["val"],
        test_splits: list[str] = ["test"],
        val_annotations: str | None = None,
        test_annotations: str | None = None,
        image_id_from: str = "stem",
        max_text_len: int = 40,
        max_regions: int = 100,
        batch_size: int = 8,
        negative_images: int = 15,
        negative_captions: int = 15,
        eval_images_per_batch: int = 16,
        val_max_images: int | None = None,
        num_workers: int = 2,
        bucket_by_length: bool = True,
        seed: int = 0,
    ) -> None:
        """
        Args:
            annotations: Karpathy-split JSON (dataset_flickr30k.json, dataset_coco.json) or JSONL
                caption lines; read for every split unless val/test_annotations are given.
            features: HDF5 feature file(s) or a directory of shards.
            tokenizer: HF tokenizer directory (a vlbert model directory holds its own).
            train_splits / val_splits / test_splits: Karpathy splits read for each stage
                ("restval" is the COCO images outside the 5K val/test that train uses too).
            val_annotations / test_annotations: other files for those splits (e.g. JSONL per split).
            image_id_from: feature-store id from a file name: "stem" ("123.jpg" -> "123"),
                "filename", or the Karpathy "imgid" / "cocoid" field.
            max_text_len: captions are truncated to this many tokens ([CLS] and [SEP] included).
            max_regions: at most this many regions per image (the detector's first ones).
            batch_size: positive pairs per device per step; each adds negative_images +
                negative_captions sampled negatives.
            negative_images / negative_captions: negatives sampled per positive (UNITER: 399),
                of which model.negatives.images / .captions hardest are kept for the loss.
            eval_images_per_batch: images loaded per evaluation batch (each scored against every caption).
            val_max_images: validate during fit on the first N images only (and their captions);
                `validate` and `test` use the whole split.
            num_workers: DataLoader worker processes.
            bucket_by_length: group captions of similar length into training batches.
            seed: negative sampling and shuffling seed.
        """
        super().__init__()
        if image_id_from not in IMAGE_ID_SOURCES:
            raise ValueError(f"data.image_id_from must be one of {IMAGE_ID_SOURCES}, got {image_id_from!r}")
        self.save_hyperparameters()
        self.tokenizer = None
        self.store: FeatureStore | None = None
        self.splits: dict[str, RetrievalSplit] = {}
        self._banks: dict[str, CaptionBank] = {}
        self.train_dataset: RetrievalTrainDataset | None = None
        self._stage: str | None = None

    # -- loading --------------------------------------------------------------------------

    def _load(self, name: str) -> RetrievalSplit:
        hp = self.hparams
        if name not in self.splits:
            path = {"train": hp.annotations, "val": hp.val_annotations or hp.annotations,
                    "test": hp.test_annotations or hp.annotations}[name]
            splits = {"train": hp.train_splits, "val": hp.val_splits, "test": hp.test_splits}[name]
            split = load_split(path, splits, hp.image_id_from)
            split.check_features(self.store)
            self.splits[name] = split
        return self.splits[name]

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        self._stage = stage
        if self.store is None:
            self.tokenizer = load_tokenizer(hp.tokenizer)
            self.store = FeatureStore(hp.features)
        # Every split the stage needs is read and checked against the feature store up front.
        if stage in ("fit", None):
            self._load("train")
            self._load("val")
            if self.train_dataset is None:
                self.train_dataset = RetrievalTrainDataset(
                    self.splits["train"], self.store, self.tokenizer, hp.negative_images, hp.negative_captions,
                    hp.max_text_len, hp.max_regions, hp.seed,
                )
        if stage == "validate":
            self._load("val")
        if stage in ("test", None):
            self._load("test")

    @property
    def feature_header(self) -> dict:
        return {"feature_dim": self.store.feature_dim, "num_classes": self.store.num_classes, "provenance": self.store.provenance}

    # -- evaluation inputs ----------------------------------------------------------------

    def eval_split(self, stage: str) -> RetrievalSplit:
        """The split a "val" or "test" loop scores (validation during fit may be cut to val_max_images)."""
        split = self._load(stage)
        return split.first_images(self.hparams.val_max_images) if stage == "val" and self._stage == "fit" else split

    def caption_bank(self, stage: str) -> CaptionBank:
        """The eval split's captions, tokenized once and kept for later evaluations."""
        split = self.eval_split(stage)
        key = f"{stage}:{split.num_captions}"
        if key not in self._banks:
            ids = tokenize_captions(self.tokenizer, split.captions, self.hparams.max_text_len)
            self._banks[key] = CaptionBank.build(ids, self.tokenizer.pad_token_id)
        return self._banks[key]

    def _eval_loader(self, stage: str) -> EvaluationBatches:
        hp = self.hparams
        rank, world = distributed_world()
        split = self.eval_split(stage)
        blocks = ImageBlocks(split, self.store, hp.eval_images_per_batch, hp.max_regions, rank, world)
        workers = min(hp.num_workers, len(blocks))
        # batch_size=None: the dataset yields whole blocks; an iterable dataset is never
        # re-sharded by Lightning's distributed sampler, so the rows stay `shard_range`'s.
        loader = DataLoader(blocks, batch_size=None, num_workers=workers, persistent_workers=False)
        return EvaluationBatches(loader, Evaluation(stage, split, self.caption_bank(stage), blocks.rows))

    # -- loaders --------------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        dataset = self.train_dataset
        resume, self._resume = getattr(self, "_resume", None), None
        batch_sampler = TaskBatchSampler(
            EpochSampler(len(dataset), shuffle=True, seed=hp.seed),
            batch_size=hp.batch_size,
            drop_last=False,
            tasks=("retrieval",),
            lengths=dataset.text_lengths() if hp.bucket_by_length else None,
            seed=hp.seed,
            resume_epoch=(resume or {}).get("epoch", -1),
            resume_batches=(resume or {}).get("batches", 0),
        )
        return DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=hp.num_workers,
            collate_fn=dataset.collate,
            persistent_workers=hp.num_workers > 0,
        )

    def val_dataloader(self) -> EvaluationBatches:
        return self._eval_loader("val")

    def test_dataloader(self) -> EvaluationBatches:
        return self._eval_loader("test")

    # Exact resume: remember how far into its epoch the run was, and skip those batches.
    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Lightning calls this in the main process for each batch it is about to use, after the
        DataLoader's workers (which read ahead); training batches carry their position, which is
        taken off here (it is no model input) and kept as the last batch training consumed."""
        position = take_batch_position(batch)
        if position is not None and (self.trainer is None or self.trainer.training):
            self._consumed = consumed_state(position)
        return batch

    def state_dict(self) -> dict:
        """{"epoch": e, "batches": batches of epoch e consumed}, of the last training batch
        consumed (or of the checkpoint this run resumed from); {} before any."""
        return dict(getattr(self, "_consumed", None) or {})

    def load_state_dict(self, state: dict) -> None:
        self._resume = state or None
        self._consumed = dict(state) if state else None
