"""`vlbert demo` (what `make demo` runs): the whole pipeline on the built-in synthetic world.

synthetic world -> region features -> tiny pretraining (held-out metrics before and after)
-> VQA fine-tuning -> retrieval fine-tuning -> captioning (the pretrained model and an untrained
one, the same steps, COCO metrics before and after). The last line printed is one JSON object with
every metric measured. Everything here serves the demo alone (the world's extraction settings,
each stage's arguments and the metrics it reports); it sits on top of every job it runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlbert.resources import config_path
from vlbert.synth import generate_world

if TYPE_CHECKING:
    from vlbert.features.extract import ExtractResult

# the retrieval metrics the demo reports
REPORTED = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "r_mean")


def stage_trainer_args(run_dir: Path, steps: int, validations: int) -> list[str]:
    """Trainer flags of a demo stage: `steps` optimiser steps however long an epoch is, validated
    `validations` times on the way, without progress bars."""
    return [
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.max_steps", str(steps),
        "--trainer.max_epochs", "-1",
        "--trainer.val_check_interval", str(max(steps // validations, 1)),
        "--trainer.check_val_every_n_epoch", "null",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]


def pretrain_args(world, features: str, run_dir: Path, steps: int, feature_dim: int, num_classes: int, mrc_kl: bool) -> list[str]:
    return [
        "--config", str(config_path("pretrain/tiny.yaml")),
        "--data.features", features,
        "--data.train_annotations", str(world.captions("train")),
        "--data.val_annotations", str(world.captions("val")),
        "--data.tokenizer", str(world.tokenizer_dir),
        "--model.model.region_feature_dim", str(feature_dim),
        "--model.model.num_region_classes", str(num_classes),
        *([] if mrc_kl else ["--model.objectives.mrc_kl", "0"]),  # a random detector's class distribution is noise
        "--model.export_dir", str(run_dir / "export"),
        *stage_trainer_args(run_dir, steps, validations=2),
    ]


def extract_features(world, output: Path, all_images: bool) -> dict:
    """Extract region features from the world's images with the default backend (torchvision
    Faster R-CNN). With its published weights cached on this machine the detector picks the
    regions in every image; otherwise nothing is downloaded and random weights pool features on
    the ground-truth boxes of the test images only (all of them with `all_images`): such
    features check the pipeline but carry little to learn from. Returns what was extracted."""
    from vlbert.featstore import read_header

    if output.exists():
        output.unlink()  # the demo's own output from an earlier run: extract afresh
    started = time.time()
    sample = None if all_images else [str(i) for i in world.image_ids("test")]
    # the world is rendered at 128 px: no need to upscale it to the detector's usual 800
    result = extract_world(world.root, output, overrides={"min_size": 128, "max_size": 192}, random_sample=sample)
    header = read_header(result.output)
    weights = header["provenance"].get("weights") or {}
    random_detector = isinstance(weights, dict) and bool(weights.get("random"))
    return {
        "path": str(result.output),
        "images": result.total, "extracted": result.extracted, "failed": result.failed,
        "dim": header["feature_dim"],
        "num_classes": header["num_classes"],
        "random_detector": random_detector,
        "weights": weights.get("source") if isinstance(weights, dict) else weights,
        "seconds": round(time.time() - started, 1),
    }


def training_features(world, extracted: dict, choice: str) -> dict:
    """The features the learning stages use. "auto": the extracted ones when a trained detector
    made them; after a random-weight detector, the world's feature-level file, because random
    convolutions keep little of an object's colour and shape (a linear probe on them finds the
    colour of 49% of objects and the shape of 28%, against 100% on the feature-level file), so
    nothing downstream would have anything to learn from."""
    from vlbert.featstore import read_header

    use_extracted = choice == "extracted" or (choice == "auto" and not extracted["random_detector"])
    if use_extracted:
        return {"source": "vlbert extract (torchvision)", "path": extracted["path"], "dim": extracted["dim"],
                "num_classes": extracted["num_classes"],
                # a randomly initialised detector's class distribution is noise: no MRC-KL on it
                "detector_classes": extracted["num_classes"] > 0 and not extracted["random_detector"]}
    header = read_header(world.features_path)
    return {"source": "synthetic feature-level HDF5", "path": str(world.features_path), "dim": header["feature_dim"],
            "num_classes": header["num_classes"], "detector_classes": header["num_classes"] > 0}


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


def vqa_args(world, features: str, run_dir: Path, init_from: str | None, feature_dim: int, train_fraction: float = 1.0,
             steps: int = 1000) -> list[str]:
    split = {s: (str(world.vqa_questions(s)), str(world.vqa_annotations(s))) for s in ("train", "val", "test")}
    return [
        "--config", str(config_path("vqa/tiny.yaml")),
        "--data.features", features,
        "--data.tokenizer", str(world.tokenizer_dir),
        *[arg for s, (q, a) in split.items() for arg in (f"--data.{s}_questions", q, f"--data.{s}_annotations", a)],
        "--data.predict_questions", split["test"][0],
        "--data.train_fraction", str(train_fraction),
        "--model.init_from", init_from or "null",
        "--model.model.region_feature_dim", str(feature_dim),
        "--model.export_dir", str(run_dir / "export"),
        *stage_trainer_args(run_dir, steps, validations=3),
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


def retrieval_args(
    world,
    features: str,
    run_dir: Path,
    init_from: str | None = None,
    steps: int = 600,
    feature_dim: int = 64,
    num_workers: int = 0,
) -> list[str]:
    """`vlbert retrieval` arguments for the tiny config on a synthetic `World`.

    init_from: a model directory (the demo's pretraining export) or None to start from scratch
    (then the tiny config's sizes apply with ``feature_dim``-d regions)."""
    return [
        "--config", str(config_path("retrieval/tiny.yaml")),
        "--data.annotations", str(world.karpathy_json),
        "--data.features", str(features),
        "--data.tokenizer", str(world.tokenizer_dir),
        "--data.num_workers", str(num_workers),
        "--model.model.region_feature_dim", str(feature_dim),
        "--model.init_from", str(init_from) if init_from else "null",
        "--model.export_dir", str(Path(run_dir) / "export"),
        *stage_trainer_args(Path(run_dir), steps, validations=3),
    ]


def run_retrieval(args: list[str], before: bool = True) -> dict:
    """Test recall before (unless `before` is false: the untrained scoring of every test pair is as
    costly as the trained one's) and after fine-tuning, with the chance level of the test split."""
    from vlbert.tasks.retrieval.cli import RetrievalCLI
    from vlbert.tasks.retrieval.datamodule import RetrievalDataModule
    from vlbert.tasks.retrieval.metric import chance_recall
    from vlbert.tasks.retrieval.module import RetrievalModule

    cli = RetrievalCLI(RetrievalModule, RetrievalDataModule, args=args, run=False, save_config_kwargs={"overwrite": True})
    untrained = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0] if before else None
    cli.trainer.fit(cli.model, cli.datamodule)
    after = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0]
    split = cli.datamodule.splits["test"]
    chance = chance_recall(split.caption_image, split.num_images)

    def pick(metrics: dict) -> dict:
        return {k: round(float(metrics[f"test/{k}"]), 2) for k in REPORTED}

    return {
        "test_images": split.num_images,
        "test_captions": split.num_captions,
        **({"before_finetuning": pick(untrained)} if untrained is not None else {}),
        "finetuned": pick(after),
        "chance": {k: round(v, 2) for k, v in chance.items() if k in REPORTED},
        "pairs_per_second": round(float(after["test/pairs_per_second"]), 1),
        "export": str(cli.model.export_dir),
    }


# the caption metrics the demo reports (x 100, as papers print them)
CAPTION_REPORTED = ("cider", "bleu4", "rouge_l")


def caption_args(world, features: str, run_dir: Path, init_from: str | None, feature_dim: int = 64,
                 steps: int = 500) -> list[str]:
    """`vlbert caption` arguments for the tiny config on a synthetic `World`: its Karpathy file, the
    pretraining export (or None: from scratch with the tiny sizes), the metrics that need no
    METEOR start-up (~10 s each time)."""
    return [
        "--config", str(config_path("caption/tiny.yaml")),
        "--data.annotations", str(world.karpathy_json),
        "--data.features", str(features),
        "--data.tokenizer", str(world.tokenizer_dir),
        "--data.num_workers", "0",
        "--model.model.region_feature_dim", str(feature_dim),
        "--model.init_from", str(init_from) if init_from else "null",
        "--model.test_metrics", "[BLEU, ROUGE_L, CIDEr]",
        "--model.export_dir", str(Path(run_dir) / "export"),
        *stage_trainer_args(Path(run_dir), steps, validations=2),
    ]


def run_caption(args: list[str]) -> dict:
    """Test-split caption metrics before and after fine-tuning, and a few test captions."""
    from vlbert.tasks.caption.cli import CaptionCLI
    from vlbert.tasks.caption.datamodule import CaptionDataModule
    from vlbert.tasks.caption.module import CaptionModule

    started = time.time()
    cli = CaptionCLI(CaptionModule, CaptionDataModule, args=args, run=False, save_config_kwargs={"overwrite": True})
    before = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0]
    cli.trainer.fit(cli.model, cli.datamodule)
    after = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0]
    split = cli.datamodule.splits["test"]
    samples = cli.model.eval().caption_batch(next(iter(cli.datamodule.test_dataloader())))[:3]

    def pick(metrics: dict) -> dict:
        return {k: round(float(metrics[f"test/{k}"]), 2) for k in CAPTION_REPORTED}

    return {
        "objective": cli.model.model.objective,
        "test_images": len(split),
        "before_finetuning": pick(before),
        "finetuned": pick(after),
        "samples": [{"caption": caption, "reference": split.references[row][0]} for row, caption in enumerate(samples)],
        "seconds": round(time.time() - started, 1),
        "export": str(cli.model.export_dir),
    }


def extract_world(world_dir: str | os.PathLike, output: str | os.PathLike, device: str = "auto",
                  progress: bool = False, overrides: dict[str, Any] | None = None,
                  random_sample: list[str] | None = None) -> ExtractResult:
    """Features for a synthetic world (``world/images/<id>.png``, ``world/boxes.json``), as `make demo` does.

    The default backend (torchvision Faster R-CNN) at small sizes. With the published weights in
    torchvision's cache the detector picks the regions; without them nothing is downloaded: random
    weights (a loud warning, recorded in provenance) pool features on the world's ground-truth boxes,
    and with `random_sample` (image ids) only those images are extracted: a random detector's
    features are a check of the pipeline, not features to learn from.
    """
    from vlbert.features.backends.torchvision import weights_on_machine
    from vlbert.features.config import load_config
    from vlbert.features.extract import extract

    world_dir = Path(world_dir)
    settings = {"min_size": 224, "max_size": 320, "proposals": 100, "batch_size": 8, "num_workers": 0,
                "device": device, "flush_every": 512, **(overrides or {})}
    config = load_config(None, settings)
    if weights_on_machine(config):
        return extract(world_dir / "images", output, config, progress=progress)
    config = load_config(None, {**settings, "weights": "none"})
    boxes_json = world_dir / "boxes.json"
    if random_sample is not None:
        boxes = json.loads(boxes_json.read_text())
        boxes_json = Path(output).with_name(Path(output).stem + ".sample_boxes.json")
        boxes_json.write_text(json.dumps({str(i): boxes[str(i)] for i in random_sample}))
    return extract(world_dir / "images", output, config, boxes_json=boxes_json, progress=progress)


# the demo's training runs under --out: each demo run replaces them (training never overwrites a
# model directory, vlbert.training.preflight); the world and the features are kept and reused
RUN_DIRS = ("pretrain", "vqa", "vqa10", "vqa_scratch", "vqa_scratch10", "retrieval", "retrieval_scratch", "caption",
            "caption_scratch")


def vqa_runs(export: str) -> list[tuple[str, str, str | None, float]]:
    """The demo's VQA runs: (results key, run directory, init_from, fraction of the training questions)."""
    return [
        ("pretrained_all_questions", "vqa", export, 1.0),
        ("untrained_all_questions", "vqa_scratch", None, 1.0),
        ("pretrained_10pct_questions", "vqa10", export, 0.1),
        ("untrained_10pct_questions", "vqa_scratch10", None, 0.1),
    ]


def equal_budget(results: dict) -> dict:
    """Pretrained against from scratch at equal fine-tuning steps and seed: each pair and the gain
    (points of VQA accuracy; points of fine-tuned retrieval recall@1)."""

    def pair(scratch: float, pretrained: float) -> dict:
        return {"from_scratch": scratch, "pretrained": pretrained, "gain": round(pretrained - scratch, 2)}

    vqa, comparison = results["vqa"], {}
    for label, suffix in (("vqa_10pct", "10pct_questions"), ("vqa_all", "all_questions")):
        comparison[label] = pair(vqa[f"untrained_{suffix}"]["vqa_acc"], vqa[f"pretrained_{suffix}"]["vqa_acc"])
    for key in ("i2t_r1", "t2i_r1"):
        comparison[f"retrieval_{key}"] = pair(results["retrieval_scratch"]["finetuned"][key],
                                              results["retrieval"]["finetuned"][key])
    return comparison


def replace_runs(out: Path) -> None:
    for name in RUN_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vlbert demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="working directory (default: demo_out); the runs of an "
                        "earlier demo in it are replaced, its world and features reused")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-images", type=int, default=4000,
                        help="images in the world, 94%% for training, 3%% each for validation and test (pretraining needs thousands: on a few hundred "
                             "a tiny model memorises which captions go with which image instead of learning to match)")
    parser.add_argument("--pretrain-steps", type=int, default=5000)
    parser.add_argument("--features", choices=("auto", "extracted", "world"), default="auto",
                        help="features for pretraining / VQA / retrieval: the extracted ones, the world's "
                             "feature-level HDF5, or auto (extracted unless the detector had random weights)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for the tiny model)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="lightning")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    out = Path(args.out)
    replace_runs(out)
    results: dict = {"seed": args.seed, "num_images": args.num_images}
    started = time.time()

    print(f"[1/6] synthetic world -> {out / 'world'}", flush=True)
    world = generate_world(out / "world", seed=args.seed, num_images=args.num_images, split_fractions=(0.94, 0.03, 0.03))

    print("[2/6] region features from the world's images (torchvision Faster R-CNN)", flush=True)
    results["extraction"] = extract_features(world, out / "features.h5", all_images=args.features == "extracted")
    feature_info = training_features(world, results["extraction"], args.features)
    features = feature_info["path"]
    results["features"] = feature_info
    print(f"      learning stages use: {feature_info['source']} ({features})", flush=True)

    print(f"[3/6] tiny pretraining, {args.pretrain_steps} steps on CPU", flush=True)
    pretraining = run_pretraining(
        pretrain_args(world, features, out / "pretrain", args.pretrain_steps, feature_info["dim"],
                      feature_info["num_classes"], feature_info["detector_classes"])
    )
    results["pretrain"] = pretraining

    print("[4/6] VQA: the pretrained encoder and an untrained one, on 10% and on all of the questions "
          "(the same steps and seed)", flush=True)
    dim = str(feature_info["dim"])
    results["vqa"] = {
        name: run_vqa(vqa_args(world, features, out / run, init, int(dim), fraction))
        for name, run, init, fraction in vqa_runs(pretraining["export"])
    }

    print("[5/6] retrieval: fine-tune the pretrained encoder with hard negatives, and an untrained one", flush=True)
    results["retrieval"] = run_retrieval(
        retrieval_args(world, features, out / "retrieval", init_from=pretraining["export"], feature_dim=int(dim), steps=400)
    )
    results["retrieval_scratch"] = run_retrieval(
        retrieval_args(world, features, out / "retrieval_scratch", init_from=None, feature_dim=int(dim), steps=400)
    )
    results["equal_budget"] = equal_budget(results)

    print("[6/6] captioning: fine-tune the pretrained model, and an untrained one for the same steps", flush=True)
    results["caption"] = {
        "pretrained": run_caption(caption_args(world, features, out / "caption", pretraining["export"], int(dim))),
        "from_scratch": run_caption(caption_args(world, features, out / "caption_scratch", None, int(dim))),
    }
    results["seconds"] = round(time.time() - started, 1)
    from vlbert.tasks.demo_summary import write_summary

    print(f"summary: {write_summary(results, out)}", flush=True)
    print(json.dumps(results))  # the last line: every metric measured
    return 0
