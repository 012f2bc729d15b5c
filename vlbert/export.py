"""`vlbert export --checkpoint last.ckpt --out DIR`: a Lightning checkpoint of `vlbert pretrain`,
`vlbert vqa` or `vlbert retrieval` -> the model directory that run's export_dir would get (for a
checkpoint from the middle of a run, or a run stopped before it exported)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vlbert.data.tokenizer import load_tokenizer
from vlbert.modeling.config import VLBertConfig
from vlbert.modeling.model import VLBertForPretraining
from vlbert.modeling.pretrained import load_complete_state


def export_checkpoint(checkpoint_path: str | Path, out_dir: str | Path, tokenizer: str | None = None) -> Path:
    """Rebuild the pretraining model from a checkpoint (loaded with weights_only=True) and save_pretrained it."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    hparams = checkpoint.get("hyper_parameters", {})
    if "model" not in hparams or "state_dict" not in checkpoint:
        raise ValueError(f"{checkpoint_path} is not a `vlbert pretrain` checkpoint (no model config / state_dict)")
    model = VLBertForPretraining(VLBertConfig.from_dict(hparams["model"]))
    load_complete_state(model, checkpoint["state_dict"], "net.", checkpoint_path)
    tokenizer_source = tokenizer or checkpoint.get("vlbert_tokenizer")
    return model.save_pretrained(
        out_dir,
        load_tokenizer(tokenizer_source) if tokenizer_source else None,
        checkpoint.get("vlbert_features"),
    )


def checkpoint_kind(checkpoint: dict) -> str:
    """Which command wrote a Lightning checkpoint: "pretrain", "vqa" or "retrieval"."""
    hparams = checkpoint.get("hyper_parameters", {})
    if "vqa_answers" in checkpoint:
        return "vqa"
    if "objectives" in hparams:
        return "pretrain"
    if "negatives" in hparams:
        return "retrieval"
    raise ValueError("not a checkpoint of `vlbert pretrain`, `vlbert vqa` or `vlbert retrieval` (none of their hyperparameters)")


def export_any(checkpoint_path: str | Path, out_dir: str | Path, tokenizer: str | None = None) -> tuple[str, Path]:
    """Export a checkpoint of any of the three training commands; returns (kind, directory)."""
    # mmap: only the few small entries the kind is read from are paged in here
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    try:
        kind = checkpoint_kind(checkpoint)
    except ValueError as error:
        raise ValueError(f"{checkpoint_path}: {error}") from None
    del checkpoint
    if kind == "vqa":
        from vlbert.tasks.vqa.module import export_checkpoint as export_vqa

        return kind, export_vqa(checkpoint_path, out_dir, tokenizer)
    if kind == "retrieval":
        from vlbert.tasks.retrieval.module import export_checkpoint as export_retrieval

        return kind, export_retrieval(checkpoint_path, out_dir, tokenizer)
    return kind, export_checkpoint(checkpoint_path, out_dir, tokenizer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vlbert export", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="Lightning checkpoint from `vlbert pretrain`, `vlbert vqa` or `vlbert retrieval` fit")
    parser.add_argument("--out", required=True, help="output model directory")
    parser.add_argument("--tokenizer", help="tokenizer to save with it (default: the one the run used)")
    args = parser.parse_args(argv)
    kind, out = export_any(args.checkpoint, args.out, args.tokenizer)
    print(f"exported {args.checkpoint} ({kind}) -> {out}")
    return 0
