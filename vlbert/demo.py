"""`vlbert demo` (what `make demo` runs): the whole pipeline on the built-in synthetic world.

synthetic world -> region features -> tiny pretraining (held-out metrics before and after)
-> VQA fine-tuning -> retrieval fine-tuning. The last line printed is one JSON object with
every metric measured.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

from vlbert.synth import generate_world


def pretrain_args(world, features: str, run_dir: Path, steps: int, feature_dim: int, num_classes: int, mrc_kl: bool) -> list[str]:
    return [
        "--config", str(Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "tiny.yaml"),
        "--data.features", features,
        "--data.train_annotations", str(world.captions("train")),
        "--data.val_annotations", str(world.captions("val")),
        "--data.tokenizer", str(world.tokenizer_dir),
        "--model.model.region_feature_dim", str(feature_dim),
        "--model.model.num_region_classes", str(num_classes),
        "--model.objectives.mrc_kl", "0.5" if mrc_kl else "0",
        "--model.export_dir", str(run_dir / "export"),
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.max_steps", str(steps),
        "--trainer.val_check_interval", str(max(steps // 2, 1)),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]


def extract_features(world, output: Path, direct: bool) -> tuple[str, dict]:
    """Region features for the world: extracted from its images (the default backend; on a machine
    without detector weights, random weights pooled on the ground-truth boxes), or the world's own
    feature-level file. Returns the path and what the features are."""
    from vlbert.featstore import read_header

    if direct:
        path, source = world.features_path, "synthetic feature-level HDF5"
    else:
        from vlbert.features.extract import extract_world

        if output.exists():
            output.unlink()  # the demo's own output from an earlier run: extract afresh
        # the world is rendered at 128 px: no need to upscale it to the detector's usual 800
        result = extract_world(world.root, output, overrides={"min_size": 128, "max_size": 192})
        path, source = result.output, "vlbert extract (torchvision)"
    header = read_header(path)
    weights = header["provenance"].get("weights") or {}
    random_detector = isinstance(weights, dict) and bool(weights.get("random"))
    return str(path), {
        "source": source,
        "path": str(path),
        "dim": header["feature_dim"],
        "num_classes": header["num_classes"],
        # a randomly initialised detector's class distribution is noise: no MRC-KL on it
        "detector_classes": header["num_classes"] > 0 and not random_detector,
        "weights": weights.get("source") if isinstance(weights, dict) else weights,
    }


def run_pretraining(args: list[str]) -> dict:
    """Validate the untrained model, train, validate again; returns both metric sets."""
    from vlbert.pretraining.cli import PretrainCLI
    from vlbert.pretraining.datamodule import PretrainDataModule
    from vlbert.pretraining.module import PretrainModule

    cli = PretrainCLI(PretrainModule, PretrainDataModule, args=args, run=False, save_config_kwargs={"overwrite": True})
    before = cli.trainer.validate(cli.model, cli.datamodule, verbose=False)[0]
    cli.trainer.fit(cli.model, cli.datamodule)
    after = cli.trainer.validate(cli.model, cli.datamodule, verbose=False)[0]
    keep = ("val/mlm_acc", "val/itm_acc", "val/mrc_kl_acc", "val/mrfr_loss")
    return {
        "untrained": {k.removeprefix("val/"): round(float(before[k]), 4) for k in keep if k in before},
        "pretrained": {k.removeprefix("val/"): round(float(after[k]), 4) for k in keep if k in after},
        "export": str(cli.model.export_dir),
    }


def vqa_args(world, features: str, run_dir: Path, init_from: str | None, feature_dim: int, train_fraction: float = 1.0) -> list[str]:
    split = {s: (str(world.vqa_questions(s)), str(world.vqa_annotations(s))) for s in ("train", "val", "test")}
    return [
        "--config", str(Path(__file__).resolve().parents[1] / "configs" / "vqa" / "tiny.yaml"),
        "--data.features", features,
        "--data.tokenizer", str(world.tokenizer_dir),
        *[arg for s, (q, a) in split.items() for arg in (f"--data.{s}_questions", q, f"--data.{s}_annotations", a)],
        "--data.predict_questions", split["test"][0],
        "--data.train_fraction", str(train_fraction),
        "--model.init_from", init_from or "null",
        "--model.model.region_feature_dim", str(feature_dim),
        "--model.export_dir", str(run_dir / "export"),
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]


def run_vqa(args: list[str]) -> dict:
    """Fine-tune on the training questions; VQA accuracy (official metric, percent) on the test split."""
    from vlbert.tasks.vqa.cli import VQACLI
    from vlbert.tasks.vqa.datamodule import VQADataModule
    from vlbert.tasks.vqa.module import VQAModule

    cli = VQACLI(VQAModule, VQADataModule, args=args, run=False, save_config_kwargs={"overwrite": True})
    cli.trainer.fit(cli.model, cli.datamodule)
    test = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0]
    return {k.removeprefix("test/"): round(float(v), 2) for k, v in test.items() if k.startswith("test/vqa_acc")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vlbert demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="working directory (default: demo_out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-images", type=int, default=600)
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--direct-features", action="store_true",
                        help="use the world's feature-level HDF5 instead of extracting from its images")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for the tiny model)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="lightning")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    out = Path(args.out)
    results: dict = {"seed": args.seed, "num_images": args.num_images}
    started = time.time()

    print(f"[1/5] synthetic world -> {out / 'world'}", flush=True)
    world = generate_world(out / "world", seed=args.seed, num_images=args.num_images)

    print("[2/5] region features from the world's images (torchvision Faster R-CNN)", flush=True)
    features, feature_info = extract_features(world, out / "features.h5", args.direct_features)
    results["features"] = feature_info

    print(f"[3/5] tiny pretraining, {args.pretrain_steps} steps on CPU", flush=True)
    pretraining = run_pretraining(
        pretrain_args(world, features, out / "pretrain", args.pretrain_steps, feature_info["dim"],
                      feature_info["num_classes"], feature_info["detector_classes"])
    )
    results["pretrain"] = pretraining

    print("[4/5] VQA: fine-tune the pretrained encoder; and an untrained one on 10% of the questions", flush=True)
    dim = str(feature_info["dim"])
    results["vqa"] = {
        "pretrained_all_questions": run_vqa(vqa_args(world, features, out / "vqa", pretraining["export"], int(dim))),
        "untrained_10pct_questions": run_vqa(vqa_args(world, features, out / "vqa_scratch10", None, int(dim), 0.1)),
    }

    print("[5/5] retrieval: fine-tune the pretrained encoder with hard negatives", flush=True)
    from vlbert.tasks.retrieval.demo import retrieval_args, run_retrieval

    results["retrieval"] = run_retrieval(
        retrieval_args(world, features, out / "retrieval", init_from=pretraining["export"], feature_dim=int(dim))
    )
    results["seconds"] = round(time.time() - started, 1)
    print(json.dumps(results))
    return 0
