"""All-pairs retrieval evaluation throughput: (image, caption) pairs scored per second by
`vlbert retrieval test`, with 1 process and with 2 DDP processes (gloo) on CPU.

The run is the real one: a Karpathy-format test split over a temporary feature store
(random fp16 features, `--regions` per image), captions of 8-20 tokens, a randomly
initialised model saved as a model directory and loaded with --model.init_from, then
`python -m vlbert.tasks.retrieval.cli test` in a subprocess per setting. Throughput is
n_images x n_captions divided by rank 0's evaluation wall time (caption tokenization,
feature loading, scoring and the gather of the shards; process start-up and imports are
not counted). Each setting pins `--threads` intra-op threads per process, so "2 processes"
uses twice the cores of "1 process"; a 1-process run with 2x threads is the fair
same-cores comparison. The 2-process score matrix is checked against the 1-process one.

    python bench/retrieval_eval.py                          # 32 images x 160 captions, 128-wide 2 layers
    python bench/retrieval_eval.py --images 100 --hidden 768 --layers 12 --feature-dim 2048
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import WORDS, emit, machine, word_tokenizer, write_feature_store  # noqa: E402
from vlbert.modeling import VLBertConfig, VLBertForRetrieval  # noqa: E402
from vlbert.training.export import write_model_directory  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def write_split(path: Path, image_ids: list[str], captions_per_image: int, seed: int = 0) -> None:
    """A Karpathy-format file whose images are all in the test split."""
    rng = np.random.default_rng(seed)
    images = [
        {
            "filename": f"{image_id}.jpg",
            "split": "test",
            "sentences": [{"raw": " ".join(rng.choice(WORDS, int(rng.integers(6, 19))))} for _ in range(captions_per_image)],
        }
        for image_id in image_ids
    ]
    path.write_text(json.dumps({"images": images}))


def run_test(work: Path, name: str, processes: int, threads: int, args: argparse.Namespace) -> dict:
    dump = work / f"scores_{name}.pt"
    command = [
        sys.executable, "-m", "vlbert.tasks.retrieval.cli", "test",
        "--data.annotations", str(work / "dataset_bench.json"),
        "--data.features", str(work / "features.h5"),
        "--data.tokenizer", str(work / "tokenizer"),
        "--data.max_regions", str(args.regions),
        "--data.eval_images_per_batch", str(args.images_per_batch),
        "--data.num_workers", "0",
        "--model.init_from", str(work / "model"),
        "--model.eval_pairs_per_batch", str(args.pairs_per_batch),
        "--model.dump_scores", str(dump),
        "--trainer.accelerator", "cpu",
        "--trainer.devices", str(processes),
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(work / f"run_{name}"),
    ]
    if processes > 1:
        command += ["--trainer.strategy", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{name} failed:\n{run.stderr[-3000:]}")
    result = torch.load(dump, weights_only=False)
    pairs = result["scores"].numel()
    return {
        "processes": processes,
        "threads_per_process": threads,
        "seconds": round(result["seconds"], 3),
        "pairs_per_second": round(pairs / result["seconds"], 1),
        "scores": result["scores"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--captions-per-image", type=int, default=5)
    p.add_argument("--regions", type=int, default=36)
    p.add_argument("--feature-dim", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--pairs-per-batch", type=int, default=1024)
    p.add_argument("--images-per-batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="vlbert_bench_retrieval_") as tmp:
        work = Path(tmp)
        ids = write_feature_store(work / "features.h5", [args.regions] * args.images, args.feature_dim)
        write_split(work / "dataset_bench.json", ids, args.captions_per_image)
        tokenizer = word_tokenizer(work / "tokenizer")
        config = VLBertConfig(
            vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
            num_attention_heads=args.heads, intermediate_size=4 * args.hidden, max_position_embeddings=64,
            region_feature_dim=args.feature_dim,
        )
        torch.manual_seed(0)
        write_model_directory(work / "model", VLBertForRetrieval(config), tokenizer)

        one = run_test(work, "1proc", 1, args.threads, args)
        two = run_test(work, "2proc", 2, args.threads, args)
        same_cores = run_test(work, "1proc_2x_threads", 1, 2 * args.threads, args)
        max_diff = float((one["scores"] - two["scores"]).abs().max())
        for r in (one, two, same_cores):
            del r["scores"]
        emit({
            "bench": "retrieval_eval",
            "device": "cpu",
            "images": args.images,
            "captions": args.images * args.captions_per_image,
            "pairs": args.images * args.images * args.captions_per_image,
            "regions": args.regions,
            "model": {"hidden": args.hidden, "layers": args.layers, "feature_dim": args.feature_dim},
            "pairs_per_batch": args.pairs_per_batch,
            "one_process": one,
            "two_processes": two,
            "one_process_same_cores": same_cores,
            "speedup_2_vs_1_process": round(two["pairs_per_second"] / one["pairs_per_second"], 2),
            "speedup_2_processes_vs_1_process_same_cores": round(two["pairs_per_second"] / same_cores["pairs_per_second"], 2),
            "max_abs_diff_2proc_vs_1proc": max_diff,
            "machine": machine(),
        })


if __name__ == "__main__":
    main()
