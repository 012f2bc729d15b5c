"""`vlbert vqa fit|validate|test|predict --config configs/vqa/<name>.yaml`: the LightningCLI."""
from __future__ import annotations

import warnings

from lightning.pytorch.cli import LightningCLI

from vlbert.tasks.vqa.datamodule import VQADataModule
from vlbert.tasks.vqa.module import VQAModule


class VQACLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "validate": {"model", "dataloaders", "datamodule"},
            "test": {"model", "dataloaders", "datamodule"},
            "predict": {"model", "dataloaders", "datamodule", "return_predictions"},
        }


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # called from Python with args
    VQACLI(
        VQAModule,
        VQADataModule,
        args=argv,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "vlbert vqa"},
    )
    return 0
