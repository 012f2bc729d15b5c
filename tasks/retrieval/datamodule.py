"""RetrievalDataModule: Karpathy-split / JSONL annotations + a feature store -> training
batches with sampled negatives, and per-rank image blocks for all-pairs evaluation."""
from __future__ import annotations

from torch.utils.data import DataLoader

from vlbert.errors import InputError
from vlbert.featstore import FeatureStore
from vlbert.training.data import TrainingDataModule

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


class RetrievalDataModule(TrainingDataModule):
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
            raise InputError(f"data.image_id_from must be one of {IMAGE_ID_SOURCES}, got {image_id_from!r}")
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
        self.open_inputs()
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
        dataset = self.train_dataset
        return self.task_loader(dataset, dataset.collate, train=True, batch_size=self.hparams.batch_size, tasks=("retrieval",),
                                lengths=dataset.text_lengths() if self.hparams.bucket_by_length else None)

    def val_dataloader(self) -> EvaluationBatches:
        return self._eval_loader("val")

    def test_dataloader(self) -> EvaluationBatches:
        return self._eval_loader("test")
