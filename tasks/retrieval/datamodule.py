"""RetrievalDataModule: Karpathy-split / JSONL annotations + a feature store -> training
batches with sampled negatives, and per-rank image blocks for all-pairs evaluation."""
from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from vlbert.data.samplers import EpochSampler, TaskBatchSampler
from vlbert.data.tokenizer import load_tokenizer
from vlbert.featstore import FeatureStore

from .data import IMAGE_ID_SOURCES, RetrievalSplit, load_split
from .dataset import ImageBlocks, RetrievalTrainDataset, tokenize_captions
from .scoring import CaptionBank, shard_range


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
        fitting = self.trainer is not None and self.trainer.state.fn == "fit"
        return split.first_images(self.hparams.val_max_images) if stage == "val" and fitting else split

    def caption_bank(self, stage: str) -> CaptionBank:
        """The eval split's captions, tokenized once and kept for later evaluations."""
        split = self.eval_split(stage)
        key = f"{stage}:{split.num_captions}"
        if key not in self._banks:
            ids = tokenize_captions(self.tokenizer, split.captions, self.hparams.max_text_len)
            self._banks[key] = CaptionBank.build(ids, self.tokenizer.pad_token_id)
        return self._banks[key]

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def eval_rows(self, stage: str) -> range:
        """Image rows of the eval split that this rank scores."""
        return shard_range(self.eval_split(stage).num_images, *self._world())

    def _eval_loader(self, stage: str) -> DataLoader:
        hp = self.hparams
        rank, world = self._world()
        blocks = ImageBlocks(self.eval_split(stage), self.store, hp.eval_images_per_batch, hp.max_regions, rank, world)
        workers = min(hp.num_workers, len(blocks))
        # batch_size=None: the dataset yields whole blocks; an iterable dataset is never
        # re-sharded by Lightning's distributed sampler, so the rows stay `shard_range`'s.
        return DataLoader(blocks, batch_size=None, num_workers=workers, persistent_workers=False)

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

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    # Exact resume: remember how far into its epoch the run was, and skip those batches.
    def state_dict(self) -> dict:
        trainer = self.trainer
        if trainer is None:
            return {}
        return {"epoch": trainer.current_epoch, "batches": trainer.fit_loop.epoch_loop.batch_progress.current.ready}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state or None
