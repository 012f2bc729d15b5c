"""The LightningCLI every training command (`vlbert pretrain`, `vqa`, `retrieval`) is built on:
typed constructor arguments as the config schema, a YAML `--config`, unknown keys refused, the
resolved config saved beside the run. Unless the config says otherwise a run logs to TensorBoard
and CSV in one folder and shows `StepProgressBar`."""
from __future__ import annotations

import logging
import os
import warnings
from typing import ClassVar

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from vlbert.training.progress import StepProgressBar

# what Lightning's Trainer method of each subcommand takes besides the config
_SUBCOMMANDS = {
    "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
    "validate": {"model", "dataloaders", "datamodule"},
    "test": {"model", "dataloaders", "datamodule"},
    "predict": {"model", "dataloaders", "datamodule", "return_predictions"},
}


class LightningTipFilter(logging.Filter):
    """Drops Lightning's "💡 Tip: ... litlogger / litmodels" adverts, printed on every run with no
    switch of their own (Lightning-AI/pytorch-lightning#21294); its other messages stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip:")


_TIP_FILTER = LightningTipFilter()
# the loggers rank_zero_info writes to (whichever of Lightning's packages was imported last set it)
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                      "lightning_utilities.core.rank_zero")


def silence_lightning_tips() -> None:
    for name in _RANK_ZERO_LOGGERS:
        logging.getLogger(name).addFilter(_TIP_FILTER)  # once: a logger keeps one copy of a filter


def default_loggers(root_dir: str) -> list[Logger]:
    """TensorBoard and CSV in one run folder, `<root_dir>/lightning_logs/version_N/` (N the next
    free number, or the SLURM job id as Lightning's own default logger does)."""
    tensorboard = TensorBoardLogger(root_dir, version=SLURMEnvironment.job_id())
    csv = CSVLogger(root_dir, name=tensorboard.name, version=tensorboard.version)
    # Make the folder now (rank 0): CSVLogger warns when its folder already holds files, and by its
    # first write TensorBoard's event file and the saved config.yaml would be there.
    csv.experiment
    return [tensorboard, csv]


class VLBertCLI(LightningCLI):
    """A job's CLI names its subcommands; `run` starts it as the `vlbert` command does."""

    subcommand_names: ClassVar[tuple[str, ...]] = ("fit", "validate")

    def __init__(self, *args, **kwargs) -> None:
        # model.optimization is the one way to set the optimiser and schedule: no --optimizer /
        # --lr_scheduler that would silently replace it
        kwargs.setdefault("auto_configure_optimizers", False)
        super().__init__(*args, **kwargs)

    @classmethod
    def subcommands(cls) -> dict[str, set[str]]:
        return {name: _SUBCOMMANDS[name] for name in cls.subcommand_names}

    @classmethod
    def run(cls, module_class, datamodule_class, argv: list[str] | None, prog: str) -> int:
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # called from Python with args
        cls(module_class, datamodule_class, args=argv, save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": prog})
        return 0

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The trainer the config describes, with this project's defaults where it is silent:
        `trainer.logger` unset (null) or true: TensorBoard + CSV under `trainer.default_root_dir`;
        the progress bar on (the default) and none in `trainer.callbacks`: `StepProgressBar`."""
        silence_lightning_tips()
        config = self._get(self.config_init, "trainer", default={})
        if config.get("logger") in (None, True) and "logger" not in kwargs:
            kwargs["logger"] = default_loggers(config.get("default_root_dir") or os.getcwd())
        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        wants_bar = config.get("enable_progress_bar") is not False and not config.get("barebones")
        if wants_bar and "callbacks" not in kwargs and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, StepProgressBar()]
        return super().instantiate_trainer(**kwargs)
