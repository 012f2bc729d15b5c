"""`vlbert pretrain fit|validate --config configs/pretrain/<name>.yaml`: the LightningCLI."""
from __future__ import annotations

import warnings

from lightning.pytorch.cli import LightningCLI

from vlbert.pretraining.datamodule import PretrainDataModule
from vlbert.pretraining.module import PretrainModule


def namespace_to_dict(namespace) -> dict:
    return namespace.as_dict() if hasattr(namespace, "as_dict") else dict(vars(namespace))


class PretrainCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"}, "validate": {"model", "dataloaders", "datamodule"}}

    def add_arguments_to_parser(self, parser) -> None:
        # The data builds masked / negative examples for the objectives the model trains.
        parser.link_arguments("model.objectives", "data.objectives", compute_fn=namespace_to_dict)


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # called from Python with args
    PretrainCLI(
        PretrainModule,
        PretrainDataModule,
        args=argv,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "vlbert pretrain"},
    )
    return 0
