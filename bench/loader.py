"""Pretraining input pipeline throughput against bare h5py reads of the same records.

(i)  bare:    one loop in this process, h5py reads of each image's features and boxes (no decoding,
              no masking, no batching): the floor of what reading the store costs;
(ii) dataset: the real training input path: PretrainDataModule (PretrainDataset + TaskBatchSampler +
              collate_pretrain) through its DataLoader with worker processes.

Both pass over the same captions' images (ITM negatives make the dataset read other, equally
distributed images); rounds alternate between the two, medians reported. MB/s counts the bytes
of the stored records read (features + boxes, + class distributions when the store has them).
Prints one JSON line.

    python bench/loader.py                     # 2000 images, 10-100 regions, 2048-d fp16
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import caption_pairs, emit, machine, median, word_tokenizer, write_feature_store  # noqa: E402
from vlbert.featstore import image_key  # noqa: E402
from vlbert.pretraining.datamodule import PretrainDataModule  # noqa: E402


def record_bytes(regions: int, feature_dim: int, num_classes: int) -> int:
    """Stored size of one image's arrays: fp16 features, fp32 boxes, fp16 class distributions."""
    return regions * (feature_dim * 2 + 4 * 4 + num_classes * 2)


def bare_pass(path: Path, image_ids: list[str], with_probs: bool) -> tuple[float, float, int]:
    """Wall and CPU seconds to read every record once with plain h5py, and the bytes read."""
    start, cpu = time.perf_counter(), time.process_time()
    total = 0
    with h5py.File(path, "r") as f:
        images = f["images"]
        for image_id in image_ids:
            group = images[image_key(image_id)]
            features = group["features"][()]
            boxes = group["boxes"][()]
            total += features.nbytes + boxes.nbytes
            if with_probs:
                total += group["class_probs"][()].nbytes
    return time.perf_counter() - start, time.process_time() - cpu, total


def children_cpu_seconds() -> float:
    """CPU seconds used so far by this process's live children (the DataLoader workers); Linux /proc."""
    total, ticks = 0.0, os.sysconf("SC_CLK_TCK")
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return total


def loader_pass(loader, epoch: int, feature_dim: int, num_classes: int) -> tuple[float, float, int, int]:
    """Wall seconds for one epoch of the DataLoader, CPU seconds of its workers and this process,
    the records it produced and their stored bytes."""
    loader.batch_sampler.sampler.set_epoch(epoch)
    start, cpu = time.perf_counter(), time.process_time() + children_cpu_seconds()
    records = stored = 0
    for batch in loader:
        regions = int(batch["region_mask"].sum())
        records += len(batch["input_ids"])
        stored += record_bytes(regions, feature_dim, num_classes)
    return time.perf_counter() - start, time.process_time() + children_cpu_seconds() - cpu, records, stored


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/loader.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--min-regions", type=int, default=10)
    parser.add_argument("--max-regions", type=int, default=100)
    parser.add_argument("--feature-dim", type=int, default=2048)
    parser.add_argument("--num-classes", type=int, default=0, help="store class distributions too (1600 for VG)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--objectives", default="mlm_itm", choices=["mlm_itm", "all"],
                        help="mlm_itm: MLM + ITM (sum mixing); all: the default objectives (needs --num-classes)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)  # the main process only receives batches
    rng = np.random.default_rng(args.seed)
    regions = rng.integers(args.min_regions, args.max_regions + 1, args.images).tolist()
    text = rng.integers(8, 41, args.images).tolist()
    if args.objectives == "all":
        if not args.num_classes:
            raise SystemExit("--objectives all trains MRC-KL, which needs class distributions: pass --num-classes 1600")
        objectives = {}
    else:
        objectives = {"mlm": 1.0, "mrfr": 0.0, "mrc": 0.0, "mrc_kl": 0.0, "itm": 1.0, "mixing": "sum"}
    with tempfile.TemporaryDirectory(prefix="vlbert-bench-") as tmp:
        tmp = Path(tmp)
        store_path = tmp / "features.h5"
        ids = write_feature_store(store_path, regions, args.feature_dim, args.num_classes, args.seed)
        pairs = caption_pairs(ids, text, args.seed)
        annotations = tmp / "captions.jsonl"
        annotations.write_text("".join(json.dumps({"image_id": p.image_id, "caption": p.caption}) + "\n" for p in pairs))
        word_tokenizer(tmp / "tokenizer")
        datamodule = PretrainDataModule(
            features=str(store_path), train_annotations=str(annotations), tokenizer=str(tmp / "tokenizer"),
            max_text_len=40, max_regions=args.max_regions, batch_size=args.batch_size, num_workers=args.workers,
            seed=args.seed, objectives=objectives,
        )
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        order = [pairs[i].image_id for i in loader.batch_sampler.sampler]  # the captions' images, in epoch order

        # Start the (persistent) workers; the store notes where each image lies on its first read.
        first_s, _, first_records, _ = loader_pass(loader, 0, args.feature_dim, args.num_classes)
        bare_pass(store_path, order, args.num_classes > 0)  # and warm the page cache alike
        bare_s, loader_s, bare_cpu, loader_cpu = [], [], [], []
        for round_index in range(args.rounds):
            seconds, cpu, bare_bytes = bare_pass(store_path, order, args.num_classes > 0)
            bare_s.append(seconds)
            bare_cpu.append(cpu)
            seconds, cpu, records, loader_bytes = loader_pass(loader, round_index + 1, args.feature_dim, args.num_classes)
            loader_s.append(seconds)
            loader_cpu.append(cpu)
        del loader
    bare_rate = len(order) / median(bare_s)
    loader_rate = records / median(loader_s)
    result = {
        "bench": "loader",
        "images": args.images,
        "regions": [args.min_regions, args.max_regions],
        "feature_dim": args.feature_dim,
        "num_classes": args.num_classes,
        "objectives": args.objectives,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "rounds": args.rounds,
        "bare_records_per_s": round(bare_rate, 1),
        "bare_mb_per_s": round(bare_bytes / median(bare_s) / 1e6, 1),
        "loader_records_per_s": round(loader_rate, 1),
        "loader_mb_per_s": round(loader_bytes / median(loader_s) / 1e6, 1),
        "ratio": round(loader_rate / bare_rate, 3),
        "bare_s": [round(s, 3) for s in bare_s],
        "loader_s": [round(s, 3) for s in loader_s],
        # Diagnostics: CPU time per record (the loader's: workers + main process). On a machine whose
        # other work leaves the workers no spare core, wall-clock ratio ~ bare_cpu / loader_cpu.
        "bare_cpu_ms_per_record": round(median(bare_cpu) / len(order) * 1e3, 3),
        "loader_cpu_ms_per_record": round(median(loader_cpu) / records * 1e3, 3),
        # The warm-up epoch: worker start-up and every image's first read (its layout probed).
        "loader_first_epoch_records_per_s": round(first_records / first_s, 1),
        "targets": {"loader_ge_0.8_of_bare": loader_rate / bare_rate >= 0.8},
        "machine": machine(),
    }
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
