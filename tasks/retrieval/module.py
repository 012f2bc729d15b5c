"""RetrievalModule: the LightningModule that fine-tunes VLBertForRetrieval with hard negatives
and evaluates all-pairs recall (steps, logging, optimiser)."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vlbert.errors import InputError, OutputExists
from vlbert.modeling import ModelSettings, VLBertForRetrieval
from vlbert.training.base import TrainingModule, as_dataclass, as_settings, build_model
from vlbert.training.optim import Optimization, build_optimizer

from .losses import LOSSES, ranking_loss
from .metric import retrieval_recall
from .negatives import select_hardest
from .scoring import ImageBlock, gather_rows, score_block

log = logging.getLogger(__name__)


@dataclass
class HardNegatives:
    """Which negatives each positive trains against, and the loss.

    Args:
        images: hardest of the data.negative_images sampled images kept per caption.
        captions: hardest of the data.negative_captions sampled captions kept per image.
        loss: "itm" (binary cross-entropy), "margin" (UNITER's hinge on probabilities) or
            "softmax" (cross-entropy of the positive among its negatives).
        margin: the hinge margin of loss "margin".
        random_steps: the first steps keep randomly drawn negatives instead of the hardest: a
            model whose ITM head does not rank yet has no useful notion of "hard", and mining
            its noise can hold it at chance. 0 mines from the first step, as UNITER does.

    Keeping as many as were sampled skips the extra no-gradient scoring pass.
    """

    images: int = 3
    captions: int = 3
    loss: str = "itm"
    margin: float = 0.2
    random_steps: int = 0


class RetrievalModule(TrainingModule):
    job = "retrieval"
    output_arguments = ("export_dir", "dump_scores")

    def __init__(
        self,
        model: ModelSettings = ModelSettings(),
        bert: str | None = None,
        init_from: str | None = None,
        negatives: HardNegatives = HardNegatives(),
        optimization: Optimization = Optimization(),
        eval_pairs_per_batch: int = 1024,
        dropout: float | None = None,
        dump_scores: str | None = None,
        export_dir: str | None = None,
    ) -> None:
        """
        Args:
            model: model sizes, used when starting from scratch; with `bert` only the region
                settings apply; with `init_from` the directory's config is used.
            bert: a HF BERT checkpoint (local directory) for the text embeddings and encoder;
                its next-sentence head initialises the ITM head.
            init_from: a vlbert model directory (pretraining export, converted UNITER, or an
                earlier retrieval export); its encoder and, when present, its ITM head
                initialise the model.
            negatives: hard-negative selection and the ranking loss.
            optimization: AdamW and learning-rate schedule.
            eval_pairs_per_batch: (image, caption) pairs per forward pass in evaluation and in
                the no-gradient scoring of sampled negatives.
            dropout: when set, replaces the hidden and attention dropout of the model however it
                was initialised (UNITER fine-tunes with 0.1).
            dump_scores: `validate` / `test` write the score matrix, ids and recall here (a .pt
                file, written by rank 0); an existing file is never overwritten.
            export_dir: when set, the fine-tuned model is saved there (save_pretrained) when fit ends.
        """
        super().__init__(export_dir)
        negatives = as_dataclass(HardNegatives, negatives)
        if negatives.loss not in LOSSES:
            raise InputError(f"model.negatives.loss must be one of {LOSSES}, got {negatives.loss!r}")
        if negatives.images < 0 or negatives.captions < 0 or negatives.images + negatives.captions == 0:
            raise InputError("model.negatives.images and model.negatives.captions must be >= 0 and not both 0")
        fine_tuning = {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
        self.model = build_model(VLBertForRetrieval, as_settings(model), bert, init_from, **fine_tuning)
        self.freeze_mask_embedding()
        self.negatives = negatives
        self.optimization = as_dataclass(Optimization, optimization)
        self.eval_pairs_per_batch = eval_pairs_per_batch
        self.dump_scores = dump_scores
        self._eval: dict | None = None
        self._eval_started = 0.0
        self.last_metrics: dict[str, float] = {}
        self.record_hyperparameters(bert=bert, init_from=init_from, negatives=negatives, optimization=self.optimization,
                                    eval_pairs_per_batch=eval_pairs_per_batch, dropout=dropout)

    # -- checks before any work -----------------------------------------------------------

    def check_data(self, datamodule, stage: str) -> None:
        if stage == "fit":
            sampled = datamodule.hparams
            for kind, kept, drawn in (
                ("images", self.negatives.images, sampled.negative_images),
                ("captions", self.negatives.captions, sampled.negative_captions),
            ):
                if kept > drawn:
                    raise InputError(
                        f"model.negatives.{kind}={kept} hard negatives cannot be kept from "
                        f"data.negative_{kind}={drawn} sampled; raise data.negative_{kind} or lower model.negatives.{kind}"
                    )
        if stage in ("validate", "test") and self.dump_scores and Path(self.dump_scores).exists():
            raise OutputExists(f"model.dump_scores: {self.dump_scores} exists; choose a new path")
        trainer = self._trainer
        for name in ("limit_val_batches", "limit_test_batches"):
            limit = getattr(trainer, name, 1.0) if trainer is not None else 1.0
            if stage != "predict" and limit not in (1.0, None) and not (name == "limit_val_batches" and limit == 0):
                raise InputError(f"trainer.{name}: {limit}: retrieval scores every image against every caption, so "
                                 "evaluation needs every batch; remove it (or set limit_val_batches: 0 to skip validation)")

    def output_paths(self, stage: str, root_dir: str) -> dict[str, tuple[Path, bool]]:
        if stage in ("validate", "test") and self.dump_scores:
            return {"model.dump_scores": (Path(self.dump_scores), False)}
        return super().output_paths(stage, root_dir)

    # -- scoring --------------------------------------------------------------------------

    def pair_scores(
        self,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
        region_features: torch.Tensor,
        region_locations: torch.Tensor,
        region_mask: torch.Tensor,
    ) -> torch.Tensor:
        """ITM log-odds of "matched" for each pair: [P] (inputs as VLBertModel.forward)."""
        return self.model(input_ids, text_mask, region_features, region_locations, region_mask).scores

    def _score_pairs(self, batch: dict, text_index: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """Scores of (text_index[p], image_index[p]) pairs of a training batch: [P]."""
        return self.pair_scores(
            input_ids=batch["input_ids"][text_index],
            text_mask=batch["text_mask"][text_index],
            region_features=batch["region_features"][image_index],
            region_locations=batch["region_locations"][image_index],
            region_mask=batch["region_mask"][image_index],
        )

    def _negative_pairs(self, batch: dict, negative_images: torch.Tensor, negative_texts: torch.Tensor):
        """Pairs of each positive's text with its negative images, then of its image with its
        negative texts: (text_index, image_index) flattened [B * (n_img + n_cap)]."""
        n_img, n_cap = negative_images.shape[1], negative_texts.shape[1]
        text_index = torch.cat([batch["positive_text"].repeat_interleave(n_img), negative_texts.flatten()])
        image_index = torch.cat([negative_images.flatten(), batch["positive_image"].repeat_interleave(n_cap)])
        return text_index, image_index

    # -- training -------------------------------------------------------------------------

    def select_hard_negatives(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's negative image / text indices cut to the hardest ones: [B, k_img], [B, k_cap].

        Scored in eval mode without gradients (dropout off), as UNITER does, then `select_hardest`.
        """
        negative_images, negative_texts = batch["negative_images"], batch["negative_texts"]
        keep_img = min(self.negatives.images, negative_images.shape[1])
        keep_cap = min(self.negatives.captions, negative_texts.shape[1])
        if self.global_step < self.negatives.random_steps:
            return negative_images[:, :keep_img], negative_texts[:, :keep_cap]  # sampled at random already
        if keep_img == negative_images.shape[1] and keep_cap == negative_texts.shape[1]:
            return negative_images, negative_texts
        was_training = self.training
        self.eval()
        chunk = self.eval_pairs_per_batch
        text_index, image_index = self._negative_pairs(batch, negative_images, negative_texts)
        with torch.no_grad():
            scores = torch.cat(
                [self._score_pairs(batch, t, i) for t, i in zip(text_index.split(chunk), image_index.split(chunk))]
            )
        self.train(was_training)
        (b, n_img), n_cap = negative_images.shape, negative_texts.shape[1]
        image_scores, text_scores = scores[: b * n_img].view(b, n_img), scores[b * n_img :].view(b, n_cap)
        hard_images = negative_images.gather(1, select_hardest(image_scores, keep_img))
        hard_texts = negative_texts.gather(1, select_hardest(text_scores, keep_cap))
        return hard_images, hard_texts

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        hard_images, hard_texts = self.select_hard_negatives(batch)
        b = batch["positive_text"].shape[0]
        negatives = self._negative_pairs(batch, hard_images, hard_texts)
        text_index = torch.cat([batch["positive_text"], negatives[0]])
        image_index = torch.cat([batch["positive_image"], negatives[1]])
        scores = self._score_pairs(batch, text_index, image_index)
        positive = scores[:b]
        image_negatives = scores[b : b + hard_images.numel()].view(b, hard_images.shape[1])
        text_negatives = scores[b + hard_images.numel() :].view(b, hard_texts.shape[1])
        cfg = self.negatives
        loss_t2i = ranking_loss(cfg.loss, positive, image_negatives, cfg.margin)  # caption vs images
        loss_i2t = ranking_loss(cfg.loss, positive, text_negatives, cfg.margin)  # image vs captions
        loss = loss_t2i + loss_i2t
        with torch.no_grad():
            negative_max = torch.cat([image_negatives, text_negatives], 1).max(1).values
            ranked_first = (positive > negative_max).float().mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        self.log("train/loss_t2i", loss_t2i, batch_size=b)
        self.log("train/loss_i2t", loss_i2t, batch_size=b)
        self.log("train/pos_above_hardest", ranked_first, batch_size=b)
        return loss

    def configure_optimizers(self):
        return build_optimizer(self, self.optimization)

    # -- evaluation: every image against every caption --------------------------------------

    def _eval_step(self, batch: dict) -> None:
        evaluation = batch["evaluation"]
        if self._eval is None:
            self._eval = {
                "evaluation": evaluation,
                "captions": evaluation.captions.to(self.device),
                "scores": torch.full((len(evaluation.rows), evaluation.split.num_captions), math.nan, device=self.device),
                "start": self._eval_started,
            }
        state = self._eval
        block = ImageBlock(batch["region_features"], batch["region_locations"], batch["region_mask"], batch["rows"])
        scores = score_block(self.pair_scores, block, state["captions"], self.eval_pairs_per_batch)
        state["scores"][batch["rows"] - evaluation.rows.start] = scores

    def _eval_end(self) -> None:
        state, self._eval = self._eval, None
        if state is None or self.trainer.sanity_checking:
            return
        split = state["evaluation"].split
        scores = gather_rows(state["scores"], split.num_images)
        if torch.isnan(scores).any():
            missing = int(torch.isnan(scores).any(1).sum())
            raise InputError(
                f"{missing} of {split.num_images} images were not scored; evaluation needs every batch "
                "(do not set trainer.limit_val_batches / limit_test_batches for retrieval)"
            )
        seconds = time.perf_counter() - state["start"]  # on rank 0: until the slowest shard arrived
        caption_image = torch.tensor(split.caption_image, device=scores.device)
        metrics = retrieval_recall(scores, caption_image)
        stage = state["evaluation"].stage
        # Every rank holds the same matrix and metrics; sync_dist only averages equal values
        # (and the ranks' nearly equal throughput: all pairs / evaluation wall time).
        for name, value in metrics.items():
            self.log(f"{stage}/{name}", value, prog_bar=name in ("r_mean", "i2t_r1", "t2i_r1"), sync_dist=True)
        self.log(f"{stage}/pairs_per_second", scores.numel() / max(seconds, 1e-9), sync_dist=True)
        self.last_metrics = metrics
        if self.dump_scores and (stage == "test" or self.trainer.state.fn != "fit"):
            self._dump(scores, split, metrics, seconds)

    def _dump(self, scores: torch.Tensor, split, metrics: dict, seconds: float) -> None:
        if not self.trainer.is_global_zero:
            return
        path = Path(self.dump_scores)
        if path.exists():
            raise OutputExists(f"model.dump_scores: {path} exists; choose a new path")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(
            {
                "scores": scores.cpu(),  # [n_images, n_captions]
                "image_ids": split.image_ids,
                "captions": split.captions,
                "caption_image": split.caption_image,
                "metrics": metrics,
                "source": split.source,
                "seconds": seconds,  # evaluation wall time (loading, scoring, gather; captions are tokenized once, before)
                "world_size": self.trainer.world_size,
            },
            tmp,
        )
        tmp.replace(path)
        log.info("wrote the %dx%d score matrix to %s", *scores.shape, path)

    def on_validation_epoch_start(self) -> None:
        self._eval, self._eval_started = None, time.perf_counter()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end()

    def on_test_epoch_start(self) -> None:
        self._eval, self._eval_started = None, time.perf_counter()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end()
