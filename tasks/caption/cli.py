"""`vlbert caption fit|validate|test|predict --config configs/caption/<name>.yaml`: the LightningCLI;
`vlbert caption evaluate --annotations A --results R`: the COCO caption metrics of a results file.

The training objective is the model's (`model.objective`, else that of the fine-tuned model in
`model.init_from`; saved in its config): the data gets it by a link from the built model, so the
labels the data builds always match what the model decodes with.
"""
from __future__ import annotations

import sys

from vlbert.training.cli import VLBertCLI

from .datamodule import CaptionDataModule
from .module import CaptionModule


class CaptionCLI(VLBertCLI):
    subcommand_names = ("fit", "validate", "test", "predict")

    def add_arguments_to_parser(self, parser) -> None:
        # the resolved objective (model.objective, else init_from's): the model is built first
        parser.link_arguments("model", "data.objective", compute_fn=lambda model: model.model.objective, apply_on="instantiate")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["evaluate"]:
        from .evaluate import main as evaluate

        return evaluate(argv[1:])
    return CaptionCLI.run(CaptionModule, CaptionDataModule, argv, "vlbert caption")


if __name__ == "__main__":
    sys.exit(main())
