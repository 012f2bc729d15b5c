"""The `vlbert` command: a thin dispatcher to each subcommand's own `main(argv)`.

Each subcommand's module is imported by its own small function when that command runs, so
`vlbert vqa-eval` does not pay for importing Lightning and a detector backend is imported only by
`vlbert extract`.
"""
from __future__ import annotations

import sys
from typing import Callable

from vlbert.errors import InputError, one_line


def run_synth(argv: list[str]) -> int | None:
    from vlbert.synth.cli import main as command

    return command(argv)


def run_extract(argv: list[str]) -> int | None:
    from vlbert.features.extract import main as command

    return command(argv)


def run_merge_features(argv: list[str]) -> int | None:
    from vlbert.features.merge import main as command

    return command(argv)


def run_import_tsv(argv: list[str]) -> int | None:
    from vlbert.features.tsv import main as command

    return command(argv)


def run_show_features(argv: list[str]) -> int | None:
    from vlbert.features.show import main as command

    return command(argv)


def run_check_features(argv: list[str]) -> int | None:
    from vlbert.features.check import main as command

    return command(argv)


def run_pretrain(argv: list[str]) -> int | None:
    from vlbert.pretraining.cli import main as command

    return command(argv)


def run_export(argv: list[str]) -> int | None:
    from vlbert.training.export import main as command

    return command(argv)


def run_vqa(argv: list[str]) -> int | None:
    from vlbert.tasks.vqa.cli import main as command

    return command(argv)


def run_vqa_eval(argv: list[str]) -> int | None:
    from vlbert.tasks.vqa.evaluate import main as command

    return command(argv)


def run_answer(argv: list[str]) -> int | None:
    from vlbert.tasks.vqa.answer import main as command

    return command(argv)


def run_retrieval(argv: list[str]) -> int | None:
    from vlbert.tasks.retrieval.cli import main as command

    return command(argv)


def run_caption(argv: list[str]) -> int | None:
    from vlbert.tasks.caption.cli import main as command

    return command(argv)


def run_convert(argv: list[str]) -> int | None:
    from vlbert.convert import main as command

    return command(argv)


def run_demo(argv: list[str]) -> int | None:
    from vlbert.tasks.demo import main as command

    return command(argv)


def run_plot(argv: list[str]) -> int | None:
    from vlbert.training.plots import main as command

    return command(argv)


def run_configs(argv: list[str]) -> int | None:
    from vlbert.resources import main as command

    return command(argv)


# name -> (the subcommand's main, one-line help)
COMMANDS: dict[str, tuple[Callable[[list[str]], int | None], str]] = {
    "synth": (run_synth, "render the synthetic world (images, captions, VQA, retrieval, features)"),
    "extract": (run_extract, "extract Faster R-CNN region features from images to HDF5"),
    "merge-features": (run_merge_features, "merge feature shards into one file"),
    "import-tsv": (run_import_tsv, "convert bottom-up-attention TSV features to the vlbert schema"),
    "show-features": (run_show_features, "draw one image's stored regions (boxes, classes, scores) to a picture"),
    "check-features": (run_check_features, "scan a feature store and report every problem (schema, values, boxes, ids)"),
    "pretrain": (run_pretrain, "pretrain the encoder (LightningCLI: fit, validate)"),
    "export": (run_export, "export a pretrain / vqa / retrieval / caption checkpoint to a model directory"),
    "vqa": (run_vqa, "fine-tune / evaluate / predict VQA (LightningCLI)"),
    "vqa-eval": (run_vqa_eval, "official VQA accuracy of a result file"),
    "answer": (run_answer, "answer a question about one image"),
    "retrieval": (run_retrieval, "fine-tune / evaluate image-text retrieval (LightningCLI)"),
    "caption": (run_caption, "fine-tune / evaluate / predict image captioning (LightningCLI)"),
    "convert": (run_convert, "convert VisualBERT / UNITER checkpoints to and from vlbert"),
    "demo": (run_demo, "the whole pipeline on the synthetic world (what `make demo` runs)"),
    "plot": (run_plot, "loss and metric curves of a run's logs as a PNG"),
    "configs": (run_configs, "print where the shipped YAML configs are and list them"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: vlbert <command> [args]", "       vlbert --version", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from vlbert import __version__

        print(f"vlbert {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"vlbert: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    # sys.argv stays as it is: DDP launchers re-run this very command line in each rank.
    try:
        result = COMMANDS[name][0](rest)
    except InputError as error:  # bad input: one line, no traceback (internal errors keep theirs)
        print(f"vlbert {name}: error: {one_line(error)}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
