"""PretrainModule: the LightningModule that pretrains VLBertForPretraining (steps, logging, optimiser)."""
from __future__ import annotations

from vlbert.modeling import ModelSettings, VLBertForPretraining
from vlbert.modeling.model import PretrainingTargets
from vlbert.featstore import FeatureStoreError
from vlbert.pretraining.objectives import TASKS, Objectives
from vlbert.training.base import TrainingModule, as_dataclass, as_settings, build_model
from vlbert.training.optim import Optimization, build_optimizer


class PretrainModule(TrainingModule):
    job = "pretrain"

    def __init__(
        self,
        model: ModelSettings = ModelSettings(),
        bert: str | None = None,
        init_from: str | None = None,
        objectives: Objectives = Objectives(),
        optimization: Optimization = Optimization(),
        export_dir: str | None = None,
    ) -> None:
        """
        Args:
            model: model sizes. With `bert` set, the text sizes (vocab, hidden, layers, heads, ...)
                come from that checkpoint's config and only the region settings here apply; with
                `init_from`, the directory's config is used.
            bert: a HF BERT checkpoint (local directory, or hub name on a networked machine) whose
                embeddings and encoder initialise the model; the region layers start new.
            init_from: a vlbert model directory (save_pretrained / vlbert export) to continue from.
            objectives: which pretraining objectives run, their weights and how they mix.
            optimization: AdamW and learning-rate schedule settings.
            export_dir: when set, the trained model directory is written there when fit ends.
        """
        super().__init__(export_dir)
        self.objectives = as_dataclass(Objectives, objectives)
        self.optimization = as_dataclass(Optimization, optimization)
        self.model = build_model(VLBertForPretraining, as_settings(model), bert, init_from)
        self.record_hyperparameters(bert=bert, init_from=init_from, objectives=self.objectives, optimization=self.optimization)

    def check_data(self, datamodule, stage: str) -> None:
        store = datamodule.store
        if (self.objectives.mrc > 0 or self.objectives.mrc_kl > 0) and self.config.num_region_classes != store.num_classes:
            raise FeatureStoreError(
                f"region classification needs model.model.num_region_classes == the detector's {store.num_classes} classes "
                f"(got {self.config.num_region_classes}); set model.model.num_region_classes: {store.num_classes}"
            )

    def targets(self, batch: dict, train: bool) -> PretrainingTargets:
        """What this batch trains: its task's objective, or every enabled one for "mix" batches,
        weighted by the objectives' weights when they are summed (mixing "sum")."""
        weights = self.objectives.weights()
        task = batch["task"]
        objectives = tuple(t for t in TASKS if weights[t] > 0) if task == "mix" else (task,)
        companions = self.objectives.companions(objectives)
        summed = train and self.objectives.mixing == "sum"
        weights = {**(weights if summed else {}), **{name: getattr(self.objectives, name) for name in companions}}
        return PretrainingTargets.from_batch(batch, objectives + companions, weights)

    def forward(self, batch: dict, train: bool = True):
        return self.model(
            batch["input_ids"], batch["text_mask"], batch["region_features"], batch["region_locations"], batch["region_mask"],
            region_masked=batch["region_masked"], targets=self.targets(batch, train), token_type_ids=batch.get("token_type_ids"),
        )

    def _log_results(self, stage: str, output, batch_size: int) -> None:
        on_step = stage == "train"
        for name, loss in output.losses.items():
            self.log(f"{stage}/{name}_loss", loss, on_step=on_step, on_epoch=not on_step, batch_size=batch_size, sync_dist=not on_step)
            if name in output.accuracies:
                self.log(f"{stage}/{name}_acc", output.accuracies[name], on_step=on_step, on_epoch=not on_step,
                         batch_size=batch_size, sync_dist=not on_step)

    def training_step(self, batch: dict, batch_idx: int):
        output = self(batch)
        # One task per step leaves the other heads (and the masked-region vector) without gradients; DDP (without
        # find_unused_parameters) needs every parameter in the graph, so they join with weight 0.
        idle = [p for m in (*self.model.heads(), self.model.vlbert.pooler) for p in m.parameters()]
        idle.append(self.model.vlbert.region_embeddings.mask_embedding)
        loss = (output.loss if output.loss is not None else 0.0) + sum(p.sum() for p in idle) * 0.0
        self._log_results("train", output, len(batch["input_ids"]))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._log_results("val", self(batch, train=False), len(batch["input_ids"]))

    def configure_optimizers(self):
        return build_optimizer(self, self.optimization)
