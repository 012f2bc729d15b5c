"""RetrievalModule: ITM fine-tuning with hard negatives, and all-pairs recall evaluation."""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from vlbert.modeling.config import VLBertConfig
from vlbert.modeling.heads import ITMHead
from vlbert.modeling.model import VLBertModel, init_weights, load_encoder_state
from vlbert.modeling.pretrained import load_bert_into, load_complete_state, load_pretrained, load_submodule_state, save_pretrained
from vlbert.pretraining.module import Optimization, as_dataclass, build_optimizer

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


class RetrievalModule(L.LightningModule):
    def __init__(
        self,
        model: VLBertConfig = VLBertConfig(),
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
                earlier retrieval export); its "vlbert.*" encoder and, when present, its
                "itm_head.*" initialise the model.
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
        super().__init__()
        model, negatives, optimization = (
            as_dataclass(VLBertConfig, model),
            as_dataclass(HardNegatives, negatives),
            as_dataclass(Optimization, optimization),
        )
        if negatives.loss not in LOSSES:
            raise ValueError(f"negatives.loss must be one of {LOSSES}, got {negatives.loss!r}")
        if negatives.images < 0 or negatives.captions < 0 or negatives.images + negatives.captions == 0:
            raise ValueError("negatives.images and negatives.captions must be >= 0 and not both 0")
        if init_from:
            config, state = load_pretrained(init_from)
            self._build(config, dropout)
            load_encoder_state(self.vlbert, state, init_from)
            if any(k.startswith("itm_head.") for k in state):
                load_submodule_state(self.itm_head, state, "itm_head.", strict=True)
                log.info("initialised encoder and ITM head from %s", init_from)
            else:
                log.info("initialised encoder from %s; the ITM head starts new", init_from)
        elif bert:
            region = {
                f.name: getattr(model, f.name)
                for f in dataclasses.fields(model)
                if f.name.startswith("region") or f.name in ("num_region_classes", "gradient_checkpointing")
            }
            self._build(VLBertConfig.from_bert(bert, **region), dropout)
            report = load_bert_into(self, bert)
            log.info("initialised from BERT %s; new: %s", bert, report["missing"])
        else:
            self._build(model, dropout)
        # fine-tuning masks no regions: the pretraining-only mask vector stays as loaded (and DDP
        # sees no parameter without a gradient)
        self.vlbert.region_embeddings.mask_embedding.requires_grad_(False)
        self.negatives = negatives
        self.optimization = optimization
        self.eval_pairs_per_batch = eval_pairs_per_batch
        self.dump_scores = dump_scores
        self.export_dir = export_dir
        self._eval: dict | None = None
        self.last_metrics: dict[str, float] = {}
        self.save_hyperparameters(
            {
                "model": self.config.to_dict(),
                "bert": bert,
                "init_from": init_from,
                "negatives": dataclasses.asdict(negatives),
                "optimization": dataclasses.asdict(optimization),
                "eval_pairs_per_batch": eval_pairs_per_batch,
                "dropout": dropout,
                "dump_scores": dump_scores,
                "export_dir": export_dir,
            }
        )

    def _build(self, config: VLBertConfig, dropout: float | None) -> None:
        if dropout is not None:
            config = dataclasses.replace(config, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
        self.config = config
        self.vlbert = VLBertModel(config)
        self.itm_head = ITMHead(config)
        self.itm_head.apply(lambda m: init_weights(m, config.initializer_range))

    # -- checks before any work -----------------------------------------------------------

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or getattr(datamodule, "store", None) is None:
            return
        datamodule.store.check_feature_dim(self.config.region_feature_dim, "model.region_feature_dim")
        if len(datamodule.tokenizer) > self.config.vocab_size:
            raise ValueError(
                f"the tokenizer has {len(datamodule.tokenizer)} tokens but model.vocab_size is "
                f"{self.config.vocab_size}; set model.vocab_size: {len(datamodule.tokenizer)} or use the "
                "tokenizer the model was trained with"
            )
        if stage == "fit":
            sampled = datamodule.hparams
            for kind, kept, drawn in (
                ("images", self.negatives.images, sampled.negative_images),
                ("captions", self.negatives.captions, sampled.negative_captions),
            ):
                if kept > drawn:
                    raise ValueError(
                        f"model.negatives.{kind}={kept} hard negatives cannot be kept from "
                        f"data.negative_{kind}={drawn} sampled; raise data.negative_{kind} or lower model.negatives.{kind}"
                    )
        if stage in ("validate", "test") and self.dump_scores and Path(self.dump_scores).exists():
            raise FileExistsError(f"model.dump_scores: {self.dump_scores} exists; choose a new path")

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
        locations = region_locations if self.config.region_location_dim else None
        pooled = self.vlbert(input_ids, text_mask, region_features, locations, region_mask).pooled_output
        logits = self.itm_head(pooled).float()
        return logits[:, 1] - logits[:, 0]

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

    def _eval_start(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        split = datamodule.eval_split(stage)
        rows = datamodule.eval_rows(stage)
        self._eval = {
            "stage": stage,
            "split": split,
            "bank": datamodule.caption_bank(stage).to(self.device),
            "rows": rows,
            "scores": torch.full((len(rows), split.num_captions), math.nan, device=self.device),
            "start": time.perf_counter(),
        }

    def _eval_step(self, batch: dict) -> None:
        state = self._eval
        block = ImageBlock(batch["region_features"], batch["region_locations"], batch["region_mask"], batch["rows"])
        scores = score_block(self.pair_scores, block, state["bank"], self.eval_pairs_per_batch)
        state["scores"][batch["rows"] - state["rows"].start] = scores

    def _eval_end(self) -> None:
        state, self._eval = self._eval, None
        if state is None or self.trainer.sanity_checking:
            return
        split = state["split"]
        scores = gather_rows(state["scores"], split.num_images)
        if torch.isnan(scores).any():
            missing = int(torch.isnan(scores).any(1).sum())
            raise RuntimeError(
                f"{missing} of {split.num_images} images were not scored; evaluation needs every batch "
                "(do not set trainer.limit_val_batches / limit_test_batches for retrieval)"
            )
        seconds = time.perf_counter() - state["start"]  # on rank 0: until the slowest shard arrived
        caption_image = torch.tensor(split.caption_image, device=scores.device)
        metrics = retrieval_recall(scores, caption_image)
        stage = state["stage"]
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
            raise FileExistsError(f"model.dump_scores: {path} exists; choose a new path")
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
                "seconds": seconds,  # evaluation wall time (tokenization, loading, scoring, gather)
                "world_size": self.trainer.world_size,
            },
            tmp,
        )
        tmp.replace(path)
        log.info("wrote the %dx%d score matrix to %s", *scores.shape, path)

    def on_validation_epoch_start(self) -> None:
        self._eval_start("val")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end()

    def on_test_epoch_start(self) -> None:
        self._eval_start("test")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end()

    # -- export ---------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "store", None) is not None:
            checkpoint["vlbert_features"] = datamodule.feature_header
            checkpoint["vlbert_tokenizer"] = str(datamodule.hparams.tokenizer)

    def save_pretrained(self, directory, tokenizer=None, features_header: dict | None = None) -> Path:
        """A model directory with "vlbert.*" and "itm_head.*" weights (loadable by init_from)."""
        return save_pretrained(directory, self, self.config, tokenizer, features_header)

    def on_fit_end(self) -> None:
        if self.export_dir and self.trainer.is_global_zero:
            datamodule = self.trainer.datamodule
            self.save_pretrained(self.export_dir, datamodule.tokenizer, datamodule.feature_header)
            log.info("exported the retrieval model to %s", self.export_dir)


def export_checkpoint(checkpoint_path: str | Path, out_dir: str | Path, tokenizer: str | None = None) -> Path:
    """A `vlbert retrieval fit` Lightning checkpoint -> a fine-tuned retrieval model directory
    (the same files fit's export_dir gets)."""
    from vlbert.data.tokenizer import load_tokenizer

    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    hparams = checkpoint.get("hyper_parameters", {})
    state = checkpoint.get("state_dict", {})
    if "model" not in hparams or "negatives" not in hparams or not any(k.startswith("itm_head.") for k in state):
        raise ValueError(f"{checkpoint_path} is not a `vlbert retrieval` checkpoint (no model config / ITM head weights)")
    module = RetrievalModule(model=VLBertConfig.from_dict(hparams["model"]))
    load_complete_state(module, state, "", checkpoint_path)
    source = tokenizer or checkpoint.get("vlbert_tokenizer")
    return module.save_pretrained(out_dir, load_tokenizer(source) if source else None, checkpoint.get("vlbert_features"))
