"""`vlbert retrieval fit|validate|test --config configs/retrieval/<name>.yaml`: the LightningCLI.

Also runnable as ``python -m vlbert.tasks.retrieval.cli``, which is what Lightning's DDP
launcher re-runs for the other ranks when started that way.
"""
from __future__ import annotations

import sys
import warnings

from vlbert.training.cli import VLBertCLI

from .datamodule import RetrievalDataModule
from .module import RetrievalModule


class RetrievalCLI(VLBertCLI):
    subcommand_names = ("fit", "validate", "test")


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__`")  # workers split blocks exactly
    return RetrievalCLI.run(RetrievalModule, RetrievalDataModule, argv, "vlbert retrieval")


if __name__ == "__main__":
    sys.exit(main())
