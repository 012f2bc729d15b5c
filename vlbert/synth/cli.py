"""`vlbert synth`: render the synthetic world (images, captions, VQA, retrieval, features)."""
from __future__ import annotations

import argparse
import sys

from vlbert.errors import InputError

from .world import generate_world


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--split wants three comma-separated fractions like 0.8,0.1,0.1, got {text!r}")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"--split wants three fractions (train,val,test), got {text!r}")
    return parts  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vlbert synth",
        description="Render a small deterministic world of coloured shapes with captions, VQA questions, "
        "retrieval annotations, ground-truth boxes, a tokenizer and region features. No downloads.",
    )
    p.add_argument("--out", required=True, help="output directory (new, empty, or an earlier world of the same settings)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    p.add_argument("--num-images", type=int, default=600, help="number of images (default 600)")
    p.add_argument("--image-size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--split", type=_fractions, default=(0.8, 0.1, 0.1), help="train,val,test fractions (default 0.8,0.1,0.1)")
    p.add_argument("--features", action=argparse.BooleanOptionalAction, default=True,
                   help="write features.h5 (default on; --no-features to skip)")
    p.add_argument("--feature-dim", type=int, default=64, help="region feature dimension (default 64)")
    p.add_argument("--feature-noise", type=float, default=0.3, help="Gaussian noise std on the features (default 0.3)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a synthetic world of other settings, or a features.h5 not written by these settings")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        world = generate_world(
            args.out,
            seed=args.seed,
            num_images=args.num_images,
            image_size=args.image_size,
            feature_dim=args.feature_dim,
            write_features=args.features,
            split_fractions=args.split,
            feature_noise=args.feature_noise,
            overwrite=args.overwrite,
            verbose=True,
        )
    except (InputError, FileExistsError) as err:
        print(f"vlbert synth: {err}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{s} {len(world.image_ids(s))}" for s in ("train", "val", "test"))
    print(f"images: {sizes}; tokenizer: {world.tokenizer_dir}"
          + (f"; features: {world.features_path}" if world.has_features else ""))
    return 0
