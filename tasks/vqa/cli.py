"""`vlbert vqa fit|validate|test|predict --config configs/vqa/<name>.yaml`: the LightningCLI.

The answer vocabulary is resolved once, before anything is built: `model.answers`, else the
fine-tuned model in `model.init_from`, else built from the training annotations; the model is
built over it and the data gets the model's (a link, so the two cannot disagree).
"""
from __future__ import annotations

from vlbert.tasks.vqa.datamodule import VQADataModule, vocab_from_annotations
from vlbert.tasks.vqa.module import VQAModule, answer_vocab
from vlbert.training.cli import VLBertCLI


class VQACLI(VLBertCLI):
    subcommand_names = ("fit", "validate", "test", "predict")

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model", "data.answers", compute_fn=lambda model: model.vocab, apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        model, data = config.model, config.data
        if answer_vocab(model.answers, model.init_from, model.load_head) is None:
            vocab = vocab_from_annotations(data.train_questions, data.train_annotations, data.feature_id_format,
                                           data.min_answer_count, data.count_answers_by)
            model.answers = vocab.to_dict()


def main(argv: list[str] | None = None) -> int:
    return VQACLI.run(VQAModule, VQADataModule, argv, "vlbert vqa")
