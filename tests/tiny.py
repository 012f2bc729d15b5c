"""Tiny sizes and CLI arguments shared by the tests."""
from __future__ import annotations

import torch

from vlbert.modeling.config import VLBertConfig


def tiny_config(**overrides) -> VLBertConfig:
    values = dict(
        vocab_size=160,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        region_feature_dim=64,
        num_region_classes=36,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    values.update(overrides)
    return VLBertConfig(**values)


def random_inputs(batch=3, text=7, regions=5, dim=64, seed=0) -> dict[str, torch.Tensor]:
    """Model inputs of random tokens and regions, nothing padded."""
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(5, 150, (batch, text), generator=g),
        "text_mask": torch.ones(batch, text, dtype=torch.bool),
        "region_features": torch.randn(batch, regions, dim, generator=g),
        "region_locations": torch.rand(batch, regions, 7, generator=g),
        "region_mask": torch.ones(batch, regions, dtype=torch.bool),
    }


def tiny_pretrain_args(world, root, **extra) -> list[str]:
    """Command-line arguments for a few CPU steps of `vlbert pretrain fit` on `world`."""
    args = [
        "--config", "configs/pretrain/tiny.yaml",
        "--data.features", str(world.features_path),
        "--data.train_annotations", str(world.captions("train")),
        "--data.val_annotations", str(world.captions("val")),
        "--data.tokenizer", str(world.tokenizer_dir),
        "--data.num_workers", "0",
        "--data.batch_size", "8",
        "--model.model.hidden_size", "32",
        "--model.model.intermediate_size", "64",
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false",
        "--model.export_dir", "null",
    ]
    for key, value in extra.items():
        args += [f"--{key}", str(value)]
    return args


def refused(capsys, argv: list[str], *patterns: str) -> str:
    """Run `vlbert argv`, which must stop on bad input: exit status 2, the error as the last line on
    stderr (matching each regex of `patterns`), no traceback. Returns that line."""
    import re

    from vlbert.cli import main as vlbert

    capsys.readouterr()
    assert vlbert(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"vlbert {argv[0]}: error: "), line
    for pattern in patterns:
        assert re.search(pattern, line), (pattern, line)
    return line
