"""`vlbert retrieval fit|validate|test --config configs/retrieval/<name>.yaml`: the LightningCLI.

Also runnable as ``python -m vlbert.tasks.retrieval.cli``, which is what Lightning's DDP
launcher re-runs for the other ranks when started that way.
"""
from __future__ import annotations

import sys
import warnings

from lightning.pytorch.cli import LightningCLI

from .datamodule import RetrievalDataModule
from .module import RetrievalModule


class RetrievalCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "validate": {"model", "dataloaders", "datamodule"},
            "test": {"model", "dataloaders", "datamodule"},
        }


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # called from Python with args
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__`")  # workers split blocks exactly
    RetrievalCLI(
        RetrievalModule,
        RetrievalDataModule,
        args=argv,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "vlbert retrieval"},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
