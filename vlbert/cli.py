"""The `vlbert` command: a thin dispatcher to each subcommand's own `main(argv)`.

Subcommand modules are imported only when used, so `vlbert vqa-eval` does not pay for
importing Lightning and a detector backend is imported only by `vlbert extract`.
"""
from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("vlbert.synth.cli", "render the synthetic world (images, captions, VQA, retrieval, features)"),
    "extract": ("vlbert.features.extract", "extract Faster R-CNN region features from images to HDF5"),
    "merge-features": ("vlbert.features.merge", "merge feature shards into one file"),
    "import-tsv": ("vlbert.features.tsv", "convert bottom-up-attention TSV features to the vlbert schema"),
    "pretrain": ("vlbert.pretraining.cli", "pretrain the encoder (LightningCLI: fit, validate)"),
    "export": ("vlbert.export", "export a pretrain / vqa / retrieval checkpoint to a model directory"),
    "vqa": ("vlbert.tasks.vqa.cli", "fine-tune / evaluate / predict VQA (LightningCLI)"),
    "vqa-eval": ("vlbert.tasks.vqa.evaluate", "official VQA accuracy of a result file"),
    "answer": ("vlbert.tasks.vqa.answer", "answer a question about one image"),
    "retrieval": ("vlbert.tasks.retrieval.cli", "fine-tune / evaluate image-text retrieval (LightningCLI)"),
    "convert": ("vlbert.convert", "convert VisualBERT / UNITER checkpoints to and from vlbert"),
    "demo": ("vlbert.demo", "the whole pipeline on the synthetic world (what `make demo` runs)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: vlbert <command> [args]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"vlbert: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    # sys.argv stays as it is: DDP launchers re-run this very command line in each rank.
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
