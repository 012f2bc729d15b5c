"""`vlbert pretrain fit|validate --config configs/pretrain/<name>.yaml`: the LightningCLI."""
from __future__ import annotations

from vlbert.pretraining.datamodule import PretrainDataModule
from vlbert.pretraining.module import PretrainModule
from vlbert.training.cli import VLBertCLI


def namespace_to_dict(namespace) -> dict:
    return namespace.as_dict() if hasattr(namespace, "as_dict") else dict(vars(namespace))


class PretrainCLI(VLBertCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The data builds masked / negative examples for the objectives the model trains.
        parser.link_arguments("model.objectives", "data.objectives", compute_fn=namespace_to_dict)


def main(argv: list[str] | None = None) -> int:
    return PretrainCLI.run(PretrainModule, PretrainDataModule, argv, "vlbert pretrain")
