"""PretrainModule: the LightningModule that pretrains VLBertForPretraining."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Sequence

import lightning as L
import torch
from torch import nn

from vlbert.modeling.config import VLBertConfig
from vlbert.modeling.model import VLBertForPretraining
from vlbert.modeling.pretrained import load_bert_into
from vlbert.pretraining.objectives import (
    REGION_TASKS,
    Objectives,
    itm_loss,
    mlm_loss,
    mrc_kl_loss,
    mrc_loss,
    mrfr_loss,
)

log = logging.getLogger(__name__)


@dataclass
class Optimization:
    """AdamW with linear warm-up then linear decay to zero over the run."""

    lr: float = 5e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup: float = 0.1  # a fraction of the total steps when < 1, else a number of steps


def as_dataclass(cls, value):
    """Accept a dataclass or its dict form (checkpoints store plain dicts, so they load with weights_only)."""
    return value if isinstance(value, cls) else cls(**value)


def build_optimizer(
    module: L.LightningModule,
    optimization: Optimization,
    parts: Sequence[tuple[nn.Module, float]] | None = None,
):
    """AdamW without weight decay on biases and LayerNorm weights; warm-up + linear decay schedule.

    parts: (submodule, learning-rate multiplier) pairs, e.g. a task head at 10x the encoder's
    rate; by default the whole module at 1x.
    """
    groups = []
    for part, multiplier in parts or [(module, 1.0)]:
        params = [p for p in part.parameters() if p.requires_grad]
        lr = optimization.lr * multiplier
        groups.append({"params": [p for p in params if p.ndim >= 2], "weight_decay": optimization.weight_decay, "lr": lr})
        groups.append({"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": lr})
    optimizer = torch.optim.AdamW(
        groups, lr=optimization.lr, betas=tuple(optimization.betas), eps=optimization.eps,
        # Fused (one kernel per step) where torch has it, except under Lightning's mixed precision
        # with gradient clipping, which refuses optimizers that unscale gradients themselves.
        fused=module.device.type in ("cuda", "cpu") and not (
            str(getattr(module.trainer, "precision", "")).endswith("-mixed") and (getattr(module.trainer, "gradient_clip_val", 0) or 0) > 0
        ),
    )
    total = max(int(module.trainer.estimated_stepping_batches), 1)
    warmup = int(optimization.warmup * total) if optimization.warmup < 1 else int(optimization.warmup)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(total - warmup, 1))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class PretrainModule(L.LightningModule):
    def __init__(
        self,
        model: VLBertConfig = VLBertConfig(),
        bert: str | None = None,
        init_from: str | None = None,
        objectives: Objectives = Objectives(),
        optimization: Optimization = Optimization(),
        export_dir: str | None = None,
    ) -> None:
        """
        Args:
            model: model sizes. With `bert` set, the text sizes (vocab, hidden, layers, heads, ...)
                come from that checkpoint's config and only the region settings here apply.
            bert: a HF BERT checkpoint (local directory, or hub name on a networked machine) whose
                embeddings and encoder initialise the model; the region layers start new.
            init_from: a vlbert model directory (save_pretrained / vlbert export) to continue from.
            objectives: which pretraining objectives run, their weights and how they mix.
            optimization: AdamW and learning-rate schedule settings.
            export_dir: when set, the trained model is saved there (save_pretrained) when fit ends.
        """
        super().__init__()
        model, objectives, optimization = (
            as_dataclass(VLBertConfig, model),
            as_dataclass(Objectives, objectives),
            as_dataclass(Optimization, optimization),
        )
        if init_from:
            self.net = VLBertForPretraining.from_pretrained(init_from)
        elif bert:
            region = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name.startswith("region") or f.name in ("num_region_classes", "gradient_checkpointing")}
            self.net = VLBertForPretraining(VLBertConfig.from_bert(bert, **region))
            report = load_bert_into(self.net, bert)
            log.info("initialised from BERT %s; new: %s", bert, report["missing"])
        else:
            self.net = VLBertForPretraining(model)
        self.config = self.net.config
        self.objectives = objectives
        self.optimization = optimization
        self.export_dir = export_dir
        self.save_hyperparameters(
            {
                "model": self.config.to_dict(),  # the config actually built, whatever it came from
                "bert": bert,
                "init_from": init_from,
                "objectives": dataclasses.asdict(objectives),
                "optimization": dataclasses.asdict(optimization),
                # export_dir is where this run writes, not part of the model: left out so that a run
                # resumed with --ckpt_path (whose hparams LightningCLI re-applies) keeps its own.
            }
        )

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or datamodule.store is None:
            return
        store, tokenizer = datamodule.store, datamodule.tokenizer
        store.check_feature_dim(self.config.region_feature_dim, "model.region_feature_dim")
        if len(tokenizer) > self.config.vocab_size:
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} tokens but model.vocab_size is {self.config.vocab_size}; "
                f"set model.vocab_size: {len(tokenizer)}"
            )
        if (self.objectives.mrc > 0 or self.objectives.mrc_kl > 0) and self.config.num_region_classes != store.num_classes:
            raise ValueError(
                f"region classification needs model.num_region_classes == the detector's {store.num_classes} classes "
                f"(got {self.config.num_region_classes}); set model.num_region_classes: {store.num_classes}"
            )

    def compute(self, batch: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Loss (and accuracy where it has one) of every objective the batch carries."""
        task, weights = batch["task"], self.objectives.weights()
        # Targets are found by collate's row indices, whose sizes the host knows: no step waits on
        # the device to learn how many targets there are.
        any_masked = batch["region_index"].numel() > 0
        output = self.net.vlbert(
            batch["input_ids"], batch["text_mask"], batch["region_features"], batch["region_locations"], batch["region_mask"],
            region_masked=batch["region_masked"] if any_masked else None,
        )
        rows = output.sequence_output.flatten(0, 1)  # [B * (T + R), H], what the indices address
        results: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        if task in ("mlm", "mix") and weights["mlm"] > 0 and batch["mlm_index"].numel():
            logits = self.net.mlm_head(rows.index_select(0, batch["mlm_index"]))
            results["mlm"] = mlm_loss(logits, batch["mlm_targets"])
        region_tasks = [task] if task in REGION_TASKS else [t for t in REGION_TASKS if weights[t] > 0 and task == "mix"]
        if region_tasks and any_masked:
            hidden = rows.index_select(0, batch["region_index"])
            if "mrfr" in region_tasks:
                results["mrfr"] = (mrfr_loss(self.net.mrfr_head(hidden), batch["region_targets"]), None)
            if "mrc" in region_tasks:
                results["mrc"] = mrc_loss(self.net.mrc_head(hidden), batch["region_labels"])
            if "mrc_kl" in region_tasks:
                logits = self.net.mrc_head(hidden)
                results["mrc_kl"] = (mrc_kl_loss(logits, batch["region_probs"]), (logits.argmax(-1) == batch["region_probs"].argmax(-1)).float().mean())
        if task in ("itm", "mix") and weights["itm"] > 0 and batch["itm_index"].numel():
            pooled = output.pooled_output.index_select(0, batch["itm_index"])
            results["itm"] = itm_loss(self.net.itm_head(pooled), batch["itm_targets"])
        return results

    def _log_results(self, stage: str, results: dict, batch_size: int) -> None:
        on_step = stage == "train"
        for name, (loss, accuracy) in results.items():
            self.log(f"{stage}/{name}_loss", loss, on_step=on_step, on_epoch=not on_step, batch_size=batch_size, sync_dist=not on_step)
            if accuracy is not None:
                self.log(f"{stage}/{name}_acc", accuracy, on_step=on_step, on_epoch=not on_step, batch_size=batch_size, sync_dist=not on_step)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        results = self.compute(batch)
        weights = self.objectives.weights()
        if self.objectives.mixing == "sample":
            loss = sum(loss for loss, _ in results.values())  # one task per batch: its plain loss
        else:
            loss = sum(weights[name] * loss for name, (loss, _) in results.items())
        # One task per step leaves the other heads (and the masked-region vector) without gradients; DDP (without
        # find_unused_parameters) needs every parameter in the graph, so they join with weight 0.
        idle = [m for m in (self.net.mlm_head, self.net.mrfr_head, self.net.mrc_head, self.net.itm_head, self.net.vlbert.pooler) if m is not None]
        idle_params = [p for m in idle for p in m.parameters()] + [self.net.vlbert.region_embeddings.mask_embedding]
        loss = loss + sum(p.sum() for p in idle_params) * 0.0
        self._log_results("train", results, len(batch["input_ids"]))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._log_results("val", self.compute(batch), len(batch["input_ids"]))

    def configure_optimizers(self):
        return build_optimizer(self, self.optimization)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Dropout draws from the global RNG: keep its state so a resumed run continues exactly.
        checkpoint["vlbert_rng"] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["vlbert_rng"]["cuda"] = torch.cuda.get_rng_state_all()
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "store", None) is not None:
            checkpoint["vlbert_features"] = datamodule.feature_header
            checkpoint["vlbert_tokenizer"] = str(datamodule.hparams.tokenizer)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get("vlbert_rng")
        if rng:
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(rng["cuda"])

    def on_fit_end(self) -> None:
        if self.export_dir and self.trainer.is_global_zero:
            datamodule = self.trainer.datamodule
            self.net.save_pretrained(self.export_dir, datamodule.tokenizer, datamodule.feature_header)
            log.info("exported the pretrained model to %s", self.export_dir)
