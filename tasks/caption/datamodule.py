"""CaptionDataModule: caption annotations (Karpathy / COCO / JSONL) + a feature store -> training
batches of (image, caption) pairs with their objective's labels, and images to caption."""
from __future__ import annotations

from functools import partial

from torch.utils.data import DataLoader

from vlbert.featstore import FeatureStore
from vlbert.modeling.caption import CAPTION_OBJECTIVES
from vlbert.training.data import TrainingDataModule

from .data import IMAGE_ID_SOURCES, CaptionDataError, CaptionSplit, load_captions
from .dataset import CaptionImageDataset, CaptionTrainDataset, collate_images, collate_train

STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


class CaptionDataModule(TrainingDataModule):
    def __init__(
        self,
        annotations: str,
        features: str | list[str],
        tokenizer: str,
        train_splits: list[str] = ["train", "restval"],
        val_splits: list[str] = ["val"],
        test_splits: list[str] = ["test"],
        predict_splits: list[str] = ["test"],
        val_annotations: str | None = None,
        test_annotations: str | None = None,
        predict_annotations: str | None = None,
        image_id_from: str = "stem",
        max_text_len: int = 40,
        max_regions: int = 100,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        val_max_images: int | None = None,
        mask_prob: float = 0.15,
        bucket_by_length: bool = True,
        num_workers: int = 2,
        seed: int = 0,
        objective: str = "masked",
    ) -> None:
        """
        Args:
            annotations: Karpathy-split JSON (dataset_coco.json), COCO captions JSON or JSONL caption
                lines; read for every split unless val/test/predict_annotations are given.
            features: HDF5 feature file(s) or a directory of shards.
            tokenizer: HF tokenizer directory (a vlbert model directory holds its own).
            train_splits / val_splits / test_splits / predict_splits: Karpathy splits each stage reads
                ("restval": the COCO images outside the Karpathy 5K val / test, which train uses too).
            val_annotations / test_annotations / predict_annotations: other files for those stages
                (e.g. COCO captions_val2014.json); a COCO or JSONL file is read whole.
            image_id_from: feature-store id of an image: "stem" of its file name ("123.jpg" -> "123"),
                "filename", or the Karpathy "imgid" / "cocoid" field (COCO files: "id").
            max_text_len: captions are truncated to this many tokens ([CLS] and [SEP] included).
            max_regions: at most this many regions per image.
            batch_size: (image, caption) pairs per device per training step.
            val_batch_size: images per batch for validate / test / predict (default batch_size).
            val_max_images: caption only the first N validation images during fit (validate and
                test always use the whole split).
            mask_prob: objective "masked": the share of caption tokens masked (at least one per caption).
            bucket_by_length: group captions of similar length into training batches.
            num_workers: DataLoader worker processes.
            seed: shuffling and masking seed.
            objective: the model's training objective (`vlbert caption` links it from model.objective).
        """
        super().__init__()
        if image_id_from not in IMAGE_ID_SOURCES:
            raise CaptionDataError(f"data.image_id_from must be one of {IMAGE_ID_SOURCES}, got {image_id_from!r}")
        if objective not in CAPTION_OBJECTIVES:
            raise CaptionDataError(f"data.objective must be one of {CAPTION_OBJECTIVES}, got {objective!r}")
        if not 0 < mask_prob <= 1:
            raise CaptionDataError(f"data.mask_prob must be in (0, 1], got {mask_prob}")
        self.save_hyperparameters()
        self.tokenizer = None
        self.store: FeatureStore | None = None
        self.splits: dict[str, CaptionSplit] = {}
        self.train_dataset: CaptionTrainDataset | None = None
        self._stage: str | None = None

    def _load(self, name: str) -> CaptionSplit:
        if name not in self.splits:
            hp = self.hparams
            path = getattr(hp, f"{name}_annotations", None) or hp.annotations
            split = load_captions(path, getattr(hp, f"{name}_splits"), hp.image_id_from)
            if name != "predict":
                split.check_references()
            split.check_features(self.store)
            self.splits[name] = split
        return self.splits[name]

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        self._stage = stage
        self.open_inputs()
        # every split the stage needs is read and checked against the feature store before any work
        for name in STAGE_SPLITS.get(stage, ("train", "val", "test")):
            self._load(name)
        if stage == "fit" and self.train_dataset is None:
            self.train_dataset = CaptionTrainDataset(self.splits["train"], self.store, self.tokenizer, hp.objective,
                                                     hp.max_text_len, hp.max_regions, hp.mask_prob, hp.seed)

    def eval_split(self, name: str) -> CaptionSplit:
        split = self._load(name)
        return split.first(self.hparams.val_max_images) if name == "val" and self._stage == "fit" else split

    def _image_loader(self, name: str) -> DataLoader:
        hp = self.hparams
        return DataLoader(CaptionImageDataset(self.eval_split(name), self.store, hp.max_regions),
                          batch_size=hp.val_batch_size or hp.batch_size, shuffle=False, num_workers=hp.num_workers,
                          collate_fn=collate_images)

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset
        return self.task_loader(dataset, partial(collate_train, pad_token_id=self.tokenizer.pad_token_id), train=True,
                                batch_size=self.hparams.batch_size, tasks=("caption",),
                                lengths=dataset.text_lengths() if self.hparams.bucket_by_length else None)

    def val_dataloader(self) -> DataLoader:
        return self._image_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._image_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._image_loader("predict")
