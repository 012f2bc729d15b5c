"""`vlbert export --checkpoint last.ckpt --out DIR`: a Lightning checkpoint -> a model directory."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vlbert.data.tokenizer import load_tokenizer
from vlbert.modeling.config import VLBertConfig
from vlbert.modeling.model import VLBertForPretraining
from vlbert.modeling.pretrained import load_submodule_state


def export_checkpoint(checkpoint_path: str | Path, out_dir: str | Path, tokenizer: str | None = None) -> Path:
    """Rebuild the pretraining model from a checkpoint (loaded with weights_only=True) and save_pretrained it."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    hparams = checkpoint.get("hyper_parameters", {})
    if "model" not in hparams or "state_dict" not in checkpoint:
        raise ValueError(f"{checkpoint_path} is not a `vlbert pretrain` checkpoint (no model config / state_dict)")
    model = VLBertForPretraining(VLBertConfig.from_dict(hparams["model"]))
    missing = load_submodule_state(model, checkpoint["state_dict"], "net.", strict=True)
    if missing:
        raise ValueError(f"{checkpoint_path} lacks weights {missing[:10]}")
    tokenizer_source = tokenizer or checkpoint.get("vlbert_tokenizer")
    return model.save_pretrained(
        out_dir,
        load_tokenizer(tokenizer_source) if tokenizer_source else None,
        checkpoint.get("vlbert_features"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vlbert export", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="Lightning checkpoint from `vlbert pretrain fit`")
    parser.add_argument("--out", required=True, help="output model directory")
    parser.add_argument("--tokenizer", help="tokenizer to save with it (default: the one the run used)")
    args = parser.parse_args(argv)
    out = export_checkpoint(args.checkpoint, args.out, args.tokenizer)
    print(f"exported {args.checkpoint} -> {out}")
    return 0
