"""`vlbert convert`: bring VisualBERT / UNITER checkpoints into vlbert, and vlbert models back to VisualBERT.

  vlbert convert --from visualbert SRC_DIR --out DST_DIR [--tokenizer TOK]
  vlbert convert --from uniter SRC.pt --out DST_DIR [--uniter-config uniter-base.json] [--tokenizer TOK] [--answers ans2label.json]
  vlbert convert --from vlbert SRC_DIR --to visualbert --out DST_DIR [--head auto|pretraining|vqa|none]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlbert.errors import InputError
from vlbert.convert.state import ConversionError, Converted

SOURCES = ("visualbert", "uniter", "vlbert")
TARGETS = ("vlbert", "visualbert")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlbert convert",
        description="Convert checkpoints between vlbert and transformers VisualBERT / original UNITER. "
        "The output directory must not exist yet; nothing is overwritten.",
    )
    parser.add_argument("--from", dest="source_format", choices=SOURCES, required=True, help="format of SRC")
    parser.add_argument("src", help="VisualBERT save_pretrained directory, UNITER .pt file, or vlbert model directory")
    parser.add_argument("--to", dest="target_format", choices=TARGETS, default="vlbert", help="format to write (default vlbert)")
    parser.add_argument("--out", required=True, help="new output directory")
    parser.add_argument("--tokenizer", help="tokenizer (directory or hub name) to store with a vlbert output; "
                        "default: the tokenizer files in SRC, if any")
    parser.add_argument("--uniter-config", help="UNITER model config JSON (e.g. config/uniter-base.json); gives "
                        "num_attention_heads, which the weights do not show (default hidden_size // 64)")
    parser.add_argument("--answers", help="answer vocabulary for a converted VQA head (UNITER ans2label.json, a JSON list, "
                        "or a vlbert answers.json); written as answers.json")
    parser.add_argument("--head", choices=("auto", "pretraining", "vqa", "none"), default="auto",
                        help="--to visualbert: which VisualBERT class to write (auto: vqa > pretraining > none)")
    parser.add_argument("--allow-unconverted", action="store_true",
                        help="write the output even when SRC holds tensors of unknown purpose (they are listed, not converted)")
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    if args.source_format == "vlbert" and args.target_format != "visualbert":
        raise ConversionError("--from vlbert needs --to visualbert (vlbert -> vlbert is not a conversion)")
    if args.target_format == "visualbert" and args.source_format != "vlbert":
        raise ConversionError(f"--to visualbert takes a vlbert model (--from vlbert), not --from {args.source_format}; "
                              "convert to vlbert first")
    if args.uniter_config and args.source_format != "uniter":
        raise ConversionError("--uniter-config applies only to --from uniter")
    if args.head != "auto" and args.target_format != "visualbert":
        raise ConversionError("--head applies only to --to visualbert")
    if args.target_format == "visualbert" and (args.tokenizer or args.answers):
        raise ConversionError("--tokenizer / --answers apply to a vlbert output; --to visualbert copies SRC's own")


def read_source(args: argparse.Namespace, pad_token_id: int) -> Converted:
    if args.source_format == "visualbert":
        from vlbert.convert.visualbert import read_visualbert_directory, visualbert_to_vlbert

        hf_config, state, architecture = read_visualbert_directory(args.src)
        return visualbert_to_vlbert(hf_config, state, architecture, str(args.src), pad_token_id)
    from vlbert.convert.uniter import read_uniter_checkpoint, uniter_config, uniter_to_vlbert

    state, notes = read_uniter_checkpoint(args.src)
    converted = uniter_to_vlbert(state, uniter_config(state, args.uniter_config), str(args.src))
    converted.report.notes[:0] = notes
    if not args.uniter_config:
        converted.report.notes.append(
            f"num_attention_heads={converted.config.num_attention_heads} assumed (hidden_size // 64); "
            "pass --uniter-config to take it from UNITER's model config"
        )
    return converted


def source_tokenizer(args: argparse.Namespace):
    """The tokenizer to store with a vlbert output: --tokenizer, else SRC's own files, else None."""
    from vlbert.data.tokenizer import load_tokenizer

    if args.tokenizer is not None:
        return load_tokenizer(args.tokenizer)
    src = Path(args.src)
    if src.is_dir() and ((src / "tokenizer_config.json").exists() or (src / "vocab.txt").exists()):
        return load_tokenizer(src)
    return None


def convert(args: argparse.Namespace) -> str:
    """Run the conversion the arguments describe; returns the report to print."""
    from vlbert.convert.output import check_output_path, write_vlbert_directory

    check_arguments(args)
    check_output_path(args.out, args.src)
    if args.target_format == "visualbert":
        from vlbert.convert.visualbert import export_visualbert

        _, report = export_visualbert(args.src, args.out, args.head)
        return report.summary() + f"\nwrote {args.out} (load it with transformers' {report.target_format.split('(')[1][:-1]}.from_pretrained)"
    tokenizer = source_tokenizer(args)
    converted = read_source(args, tokenizer.pad_token_id if tokenizer is not None else 0)
    report = converted.report
    unknown = [key for key, why in report.unconverted.items() if why == "unknown key"]
    if unknown and not args.allow_unconverted:
        raise ConversionError(
            f"{args.src} holds {len(unknown)} tensor(s) this converter does not know, so they would be lost:\n  "
            + "\n  ".join(unknown)
            + "\nrerun with --allow-unconverted to convert the rest anyway (they stay listed in conversion.json)"
        )
    answers = None
    if args.answers:
        from vlbert.modeling.vqa import read_answers_file

        answers = read_answers_file(args.answers)
    if tokenizer is None:
        report.notes.append("no tokenizer stored (none in SRC, no --tokenizer): add the one the model was trained with "
                            "(VisualBERT: bert-base-uncased; UNITER: bert-base-cased)")
    write_vlbert_directory(args.out, converted, tokenizer, answers)
    return report.summary() + f"\nwrote {args.out} (a vlbert model directory; details in conversion.json)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        print(convert(args))
    except (InputError, OSError) as error:  # ConversionError, bad files, tokenizers not found
        print(f"vlbert convert: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
