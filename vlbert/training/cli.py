"""The LightningCLI every training command (`vlbert pretrain`, `vqa`, `retrieval`) is built on:
typed constructor arguments as the config schema, a YAML `--config`, unknown keys refused, the
resolved config saved beside the run."""
from __future__ import annotations

import warnings
from typing import ClassVar

from lightning.pytorch.cli import LightningCLI

# what Lightning's Trainer method of each subcommand takes besides the config
_SUBCOMMANDS = {
    "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
    "validate": {"model", "dataloaders", "datamodule"},
    "test": {"model", "dataloaders", "datamodule"},
    "predict": {"model", "dataloaders", "datamodule", "return_predictions"},
}


class VLBertCLI(LightningCLI):
    """A job's CLI names its subcommands; `run` starts it as the `vlbert` command does."""

    subcommand_names: ClassVar[tuple[str, ...]] = ("fit", "validate")

    @classmethod
    def subcommands(cls) -> dict[str, set[str]]:
        return {name: _SUBCOMMANDS[name] for name in cls.subcommand_names}

    @classmethod
    def run(cls, module_class, datamodule_class, argv: list[str] | None, prog: str) -> int:
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # called from Python with args
        cls(module_class, datamodule_class, args=argv, save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": prog})
        return 0
