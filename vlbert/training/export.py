"""Model directories: written at the end of fit (a run's export_dir) and by `vlbert export` from
any checkpoint of `vlbert pretrain`, `vqa`, `retrieval` or `caption`, the same files either way.

    vlbert export --checkpoint runs/.../last.ckpt --out models/my-vlbert

A directory holds config.json and model.safetensors (transformers' save_pretrained), the
tokenizer files, features.json (the provenance of the training features), the job's own
files (VQA: answers.json, vqa.json) and README.md, a model card of what the run recorded
(vlbert.training.model_card).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vlbert.modeling import VLBertPreTrainedModel
from vlbert.modeling.pretrained import quiet_transformers, write_extras
from vlbert.training.checkpoints import model_from_checkpoint, read_checkpoint
from vlbert.training.model_card import card_facts, data_record, model_card
from vlbert.training.preflight import check_new_output

CARD_FILE = "README.md"


def write_model_directory(
    directory: str | Path,
    model: VLBertPreTrainedModel,
    tokenizer=None,
    features_header: dict | None = None,
    files: dict[str, dict | list] | None = None,
    card: str | None = None,
) -> Path:
    """save_pretrained, plus the tokenizer, features.json, the job's files and the model card
    (README.md) when given."""
    with quiet_transformers():
        model.save_pretrained(directory)
    write_extras(directory, tokenizer, features_header, files)
    if card is not None:
        (Path(directory) / CARD_FILE).write_text(card)
    return Path(directory)


def checkpoint_card(checkpoint: dict, model: VLBertPreTrainedModel) -> str:
    """The model card of a checkpoint: from its `vlbert_card` (what the run recorded when it was
    saved); a checkpoint written before vlbert_card gives what Lightning kept (step, data settings)."""
    record = checkpoint.get("vlbert_card")
    if record is None:
        record = {"progress": {"global_step": checkpoint["global_step"]}} if "global_step" in checkpoint else {}
        data = data_record(checkpoint.get("datamodule_hyper_parameters"))
        if data:
            record["data"] = data
    facts = card_facts(checkpoint["vlbert_job"], type(model).__name__, checkpoint["vlbert_config"],
                       checkpoint.get("hyper_parameters"), checkpoint.get("vlbert_files"), record,
                       checkpoint.get("vlbert_init"), checkpoint.get("vlbert_features"), model.num_parameters())
    return model_card(facts)


def export_checkpoint(checkpoint_path: str | Path, out_dir: str | Path, tokenizer: str | None = None) -> tuple[str, Path]:
    """The model directory of a checkpoint; returns (the job that wrote it, the directory)."""
    from vlbert.data.tokenizer import load_tokenizer

    checkpoint = read_checkpoint(checkpoint_path)
    check_new_output("--out", out_dir, directory=True, resuming=False)
    model = model_from_checkpoint(checkpoint, checkpoint_path)
    source = tokenizer or checkpoint.get("vlbert_tokenizer")
    out = write_model_directory(out_dir, model, load_tokenizer(source) if source else None,
                                checkpoint.get("vlbert_features"), checkpoint.get("vlbert_files"),
                                card=checkpoint_card(checkpoint, model))
    return checkpoint["vlbert_job"], out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vlbert export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="Lightning checkpoint of `vlbert pretrain`, `vqa`, `retrieval` or `caption`")
    parser.add_argument("--out", required=True, help="output model directory")
    parser.add_argument("--tokenizer", help="tokenizer to save with it (default: the one the run used)")
    args = parser.parse_args(argv)
    job, out = export_checkpoint(args.checkpoint, args.out, args.tokenizer)  # bad input: one line (vlbert.cli)
    print(f"exported {args.checkpoint} ({job}) -> {out}")
    return 0
