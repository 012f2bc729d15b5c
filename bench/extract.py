"""Benchmark `vlbert extract` against a bare loop of the same torchvision detector's forward.

Prints one JSON line:
  overhead_ratio = bare images/s / extraction images/s - 1   (target <= 0.10; bare and extraction
                   alternate over --rounds blocks of images so that load changes hit both alike)
  memory_ratio   = peak RSS extracting N images / peak RSS extracting N/10 images  (target <= 1.10)

The bare loop gets its images already decoded in memory and times only `model(batch)`; the
extraction is timed end to end (model build, decoding in workers, box selection, writing the
parts, the final merge). Each measurement runs in its own process so peaks do not mix.
Random weights by default (nothing is downloaded); pass --weights for a real detector.

    python bench/extract.py                 # 200 images, CPU-friendly sizes
    python bench/extract.py --images 200 --min-size 800 --max-size 1333 --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_images(folder: Path, count: int, width: int = 640, height: int = 480) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = np.empty((height, width, 3), np.uint8)
        pixels[:] = rng.integers(0, 255, 3)
        for _ in range(6):  # a few objects on a plain background
            x, y = rng.integers(0, width - 60), rng.integers(0, height - 60)
            pixels[y:y + rng.integers(20, 200), x:x + rng.integers(20, 200)] = rng.integers(0, 255, 3)
        pixels = np.clip(pixels + rng.normal(0, 8, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=90)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def config_from(args):
    from vlbert.features.config import load_config

    return load_config(None, dict(weights=args.weights, min_size=args.min_size, max_size=args.max_size,
                                  batch_size=args.batch_size, num_workers=args.num_workers, device=args.device))


def child_bare(args) -> dict:
    import torch
    from PIL import Image

    from vlbert.features.backends import resolve_device
    from vlbert.features.backends.torchvision import build_model

    config = config_from(args)
    device = resolve_device(config.device)
    model = build_model(config).to(device)
    paths = sorted(Path(args.folder).glob("*.jpg"))[args.start: args.start + args.count]
    images = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1).copy()) for p in paths]
    batches = [images[i:i + config.batch_size] for i in range(0, len(images), config.batch_size)]
    with torch.inference_mode():
        model([img.to(device).float() / 255 for img in batches[0]])  # warm-up, untimed
        _sync(device)
        start = time.perf_counter()
        for batch in batches:
            model([img.to(device).float() / 255 for img in batch])
        _sync(device)
        seconds = time.perf_counter() - start
    return {"images": len(images), "seconds": seconds, "images_per_s": len(images) / seconds}


def child_extract(args) -> dict:
    import torch

    from vlbert.features.extract import extract

    config = config_from(args)
    folder = Path(args.folder)
    subset = folder.parent / f"subset{args.start}-{args.count}"
    subset.mkdir(exist_ok=True)
    for path in sorted(folder.glob("*.jpg"))[args.start: args.start + args.count]:
        link = subset / path.name
        if not link.exists():
            os.symlink(path, link)
    output = folder.parent / f"feats{args.start}-{args.count}.h5"
    start = time.perf_counter()
    result = extract(subset, output, config, progress=False)
    seconds = time.perf_counter() - start
    out = {"images": result.extracted, "seconds": seconds, "images_per_s": result.extracted / seconds,
           "peak_rss_mb": peak_rss_mb(), "output_mb": output.stat().st_size / 2**20}
    if torch.cuda.is_available() and config.device != "cpu":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_child(mode: str, count: int, folder: Path, args, start: int = 0) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--count", str(count), "--start", str(start),
               "--folder", str(folder),
               "--weights", args.weights, "--min-size", str(args.min_size), "--max-size", str(args.max_size),
               "--batch-size", str(args.batch_size), "--num-workers", str(args.num_workers),
               "--device", args.device, "--threads", str(args.threads)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--weights", default="none")
    parser.add_argument("--min-size", type=int, default=320)
    parser.add_argument("--max-size", type=int, default=480)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--child", choices=("bare", "extract"), help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=4,
                        help="throughput: alternate bare / extraction over this many blocks of images, "
                             "so that a change in machine load hits both alike")
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child:
        result = child_bare(args) if args.child == "bare" else child_extract(args)
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="vlbert-bench-") as tmp:
        folder = Path(tmp) / "images"
        make_images(folder, args.images)
        small = max(1, args.images // 10)
        block = -(-args.images // args.rounds)
        bare_s = extract_s = 0.0
        for start in range(0, args.images, block):  # throughput, interleaved
            count = min(block, args.images - start)
            bare_s += run_child("bare", count, folder, args, start)["seconds"]
            extract_s += run_child("extract", count, folder, args, start)["seconds"]
        few = run_child("extract", small, folder, args)  # memory: one run of N/10, one of N
        full = run_child("extract", args.images, folder, args)
    import torch

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    print(json.dumps({
        "bench": "extract",
        "device": device if device != "auto" else "cpu",
        "images": args.images,
        "min_size": args.min_size, "max_size": args.max_size, "batch_size": args.batch_size,
        "rounds": args.rounds,
        "bare_images_per_s": round(args.images / bare_s, 3),
        "extract_images_per_s": round(args.images / extract_s, 3),
        "overhead_ratio": round(extract_s / bare_s - 1.0, 4),
        "extract_single_run_images_per_s": round(full["images_per_s"], 3),
        f"peak_rss_mb_{small}": round(few["peak_rss_mb"], 1),
        f"peak_rss_mb_{args.images}": round(full["peak_rss_mb"], 1),
        "memory_ratio": round(full["peak_rss_mb"] / few["peak_rss_mb"], 4),
        **({"memory_ratio_cuda": round(full["peak_cuda_mb"] / few["peak_cuda_mb"], 4)}
           if "peak_cuda_mb" in full else {}),
    }))


if __name__ == "__main__":
    main()
