"""A feature store of a million image ids, as one file and as a 64-shard set read without merging:
open time, memory each DataLoader worker adds for the index, random-read records/s. Prints one JSON
line.

The store is written once under --dir with FeatureWriter (small records: --dim-d features, 4 boxes;
~2 KB of HDF5 per image, mostly its group) and reused by later runs with the same sizes. Reads
alternate between the file and the shard set in rounds, the same random ids for both.

Index memory per worker: a forked worker reads --reads random records, then reports its private
memory (Private_Clean + Private_Dirty of /proc/self/smaps_rollup: pages it does not share with the
parent), against a worker that read nothing. `dict_index_mb` is what the index of vlbert <= 0.2 (a
dict of str ids to tuples) costs in memory, built here the same way, for comparison.

    python bench/store_scale.py                      # 1M ids: written once (~4.5 GB, tens of minutes), then reused
    python bench/store_scale.py --images 100000      # a quick look
"""
from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit, machine  # noqa: E402
from vlbert.featstore import FeatureStore, FeatureWriter, RegionRecord  # noqa: E402

TARGETS = {"open_s": 10.0, "index_mb_per_worker": 200.0, "shard_read_ratio": 0.8}


def image_id(i: int) -> str:
    return f"COCO_train2014_{i:012d}"  # COCO-like ids: 27 characters


def _write(paths: list[Path], images: int, dim: int) -> None:
    """Image i goes to paths[i % len(paths)]."""
    features = np.ones((4, dim), np.float16)
    boxes = np.tile(np.float32([[0, 0, 8, 8]]), (4, 1))
    writers = [FeatureWriter(path, dim, overwrite=True) for path in paths]
    for i in range(images):
        writers[i % len(writers)].add(RegionRecord(image_id(i), features * (i % 7), boxes, 8, 8))
    for writer in writers:
        writer.close()


def write_stores(root: Path, images: int, shards: int, dim: int) -> tuple[Path, Path]:
    """One file and a folder of `shards` files with the same records (written once, then reused;
    the two in parallel processes)."""
    single, folder = root / f"single_{images}.h5", root / f"shards_{images}_{shards}"
    if single.exists() and folder.is_dir() and len(list(folder.glob("*.h5"))) == shards:
        return single, folder
    folder.mkdir(parents=True, exist_ok=True)
    context = mp.get_context("fork")
    jobs = [context.Process(target=_write, args=([single], images, dim)),
            context.Process(target=_write, args=([folder / f"feats.shard{s:05d}-of-{shards:05d}.h5" for s in range(shards)], images, dim))]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
        if job.exitcode != 0:
            raise SystemExit(f"writing the stores failed (exit {job.exitcode})")
    return single, folder


def private_mb() -> float:
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return (fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)) / 1024


def _worker(store: FeatureStore, ids: list[str], queue) -> None:
    gc.freeze()  # as DataLoader workers do nothing else; keeps the GC from touching inherited objects
    before = private_mb()
    for i in ids:
        store[i]
    queue.put(private_mb() - before)


def worker_index_mb(store: FeatureStore, ids: list[str]) -> float:
    """Memory a forked worker makes its own while reading `ids` minus one that reads none (what the
    records themselves cost)."""
    context = mp.get_context("fork")
    results = []
    for work in (ids, ids[:1]):
        queue = context.Queue()
        process = context.Process(target=_worker, args=(store, work, queue))
        process.start()
        results.append(queue.get())
        process.join()
    return max(results[0] - results[1], 0.0)


def reads_per_s(store: FeatureStore, ids: list[str]) -> float:
    start = time.perf_counter()
    for i in ids:
        store[i]
    return len(ids) / (time.perf_counter() - start)


def dict_index_mb(images: int) -> float:
    """The old index: {image id: (file index, group key, row)}, measured by max RSS growth."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    index = {image_id(i): (i % 64, image_id(i), i) for i in range(images)}
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    del index
    return grown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--reads", type=int, default=20_000, help="random reads per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/vlbert_store_scale", help="where the stores are written (and reused)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    single, folder = write_stores(Path(args.dir), args.images, args.shards, args.dim)
    written_s = time.perf_counter() - started

    opened = {}
    for name, source in (("single", single), ("shards", str(folder / "feats.shard*.h5"))):
        start = time.perf_counter()
        store = FeatureStore(source)
        opened[name] = (store, time.perf_counter() - start)
    assert len(opened["single"][0]) == len(opened["shards"][0]) == args.images

    rng = np.random.default_rng(0)
    rates = {"single": [], "shards": []}
    for r in range(args.rounds):
        ids = [image_id(i) for i in rng.integers(0, args.images, args.reads)]
        for name in (("single", "shards") if r % 2 == 0 else ("shards", "single")):
            rates[name].append(reads_per_s(opened[name][0], ids))
    sample = [image_id(i) for i in rng.integers(0, args.images, args.reads)]
    memory = {name: worker_index_mb(store, sample) for name, (store, _) in opened.items()}
    result = {
        "bench": "store_scale",
        "images": args.images,
        "shards": args.shards,
        "write_s": round(written_s, 1),
        "open_s_single": round(opened["single"][1], 2),
        "open_s_shards": round(opened["shards"][1], 2),
        "index_mb_in_process": round(sum(a.nbytes for a in (opened["single"][0]._index.ids, opened["single"][0]._index.order,
                                                              opened["single"][0]._index.files)) / 2**20, 1),
        "worker_mb_single": round(memory["single"], 1),
        "worker_mb_shards": round(memory["shards"], 1),
        "reads_per_s_single": round(float(np.median(rates["single"])), 1),
        "reads_per_s_shards": round(float(np.median(rates["shards"])), 1),
        "dict_index_mb": round(dict_index_mb(args.images), 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "machine": machine(),
    }
    result["shard_read_ratio"] = round(result["reads_per_s_shards"] / result["reads_per_s_single"], 3)
    result["targets"] = {
        "open_under_10s": max(result["open_s_single"], result["open_s_shards"]) < TARGETS["open_s"],
        "worker_index_under_200mb": max(result["worker_mb_single"], result["worker_mb_shards"]) < TARGETS["index_mb_per_worker"],
        "shard_reads_at_least_0.8": result["shard_read_ratio"] >= TARGETS["shard_read_ratio"],
    }
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
