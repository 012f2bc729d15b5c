"""Shared pieces of the benchmarks: a synthetic feature store, timing, the matmul peak, JSON output.

Nothing here downloads anything: captions use a word-level vocabulary written to a temp dir
and region features are random, so the benchmarks run offline and measure only the code.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from vlbert.data.annotations import CaptionPair
from vlbert.data.tokenizer import build_word_tokenizer
from vlbert.featstore import FeatureWriter, RegionRecord

WORDS = [f"w{i}" for i in range(200)]  # one token each in the word-level vocabulary


def set_threads(threads: int | None) -> int:
    """Use the same number of intra-op threads for everything timed in the process."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    wall: float  # seconds on the clock on the wall
    cpu: float  # seconds this process ran (all its threads): robust to other work on a shared machine

    def on(self, clock: str) -> float:
        return self.wall if clock == "wall" else self.cpu


def timed(fn: Callable[[], object], device: torch.device) -> Timing:
    """Wall and process-CPU seconds of fn(), with the device queue drained before and after."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


def autocast(device: torch.device, dtype: str):
    """bf16 autocast on the device, or nothing for fp32."""
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


class MatmulPeak:
    """FLOP/s of a large square torch.mm in the benchmark's dtype: the machine's practical peak.
    Measured repeatedly between timed rounds, so it sees the same machine load as the model."""

    def __init__(self, device: torch.device, dtype: str, size: int = 4096, repeats: int | None = None) -> None:
        torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
        generator = torch.Generator().manual_seed(0)
        self.a = torch.randn(size, size, generator=generator).to(device, torch_dtype)
        self.b = torch.randn(size, size, generator=generator).to(device, torch_dtype)
        self.out = torch.empty(size, size, device=device, dtype=torch_dtype)
        self.device, self.size = device, size
        # A GPU finishes one product in about a millisecond: time several back to back, so the
        # synchronisation around them does not count as slowness of the product.
        self.repeats = repeats or (10 if device.type == "cuda" else 1)
        self.samples: list[Timing] = []
        torch.mm(self.a, self.b, out=self.out)  # library initialisation, first touch of `out`

    def _products(self) -> None:
        for _ in range(self.repeats):
            torch.mm(self.a, self.b, out=self.out)

    def measure(self) -> None:
        self.samples.append(timed(self._products, self.device))

    def flops_per_s(self, clock: str, best: bool = False) -> float:
        """Median (or best) FLOP/s over the measurements, on `clock`."""
        rates = [2.0 * self.size**3 * self.repeats / t.on(clock) for t in self.samples]
        return max(rates) if best else median(rates)


def median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def write_feature_store(
    path: str | os.PathLike,
    region_counts: Sequence[int],
    feature_dim: int = 2048,
    num_classes: int = 0,
    seed: int = 0,
) -> list[str]:
    """A feature file with one image per entry of region_counts (fp16 features, as extraction writes).
    Returns the image ids."""
    rng = np.random.default_rng(seed)
    ids = []
    with FeatureWriter(path, feature_dim, num_classes, {"backend": "bench"}, "float16", overwrite=True) as writer:
        for i, count in enumerate(region_counts):
            xy = rng.uniform(0, 500, (count, 2)).astype(np.float32)
            wh = rng.uniform(10, 100, (count, 2)).astype(np.float32)
            probs = None
            if num_classes:
                probs = rng.random((count, num_classes), dtype=np.float32)
                probs /= probs.sum(-1, keepdims=True)
            writer.add(
                RegionRecord(
                    image_id=str(i),
                    features=rng.standard_normal((count, feature_dim), dtype=np.float32).clip(0, None),
                    boxes=np.concatenate([xy, xy + wh], 1),
                    image_w=600,
                    image_h=600,
                    class_probs=probs,
                )
            )
            ids.append(str(i))
    return ids


def word_tokenizer(out_dir: str | os.PathLike):
    return build_word_tokenizer(WORDS, Path(out_dir))


def caption_pairs(image_ids: Sequence[str], token_counts: Sequence[int], seed: int = 0) -> list[CaptionPair]:
    """One caption per image, tokenising to exactly token_counts[i] tokens ([CLS] and [SEP] included)."""
    rng = np.random.default_rng(seed)
    return [
        CaptionPair(image_id, " ".join(rng.choice(WORDS, count - 2)))
        for image_id, count in zip(image_ids, token_counts)
    ]


def machine() -> dict:
    """What the figures were measured on."""
    info = {"torch": torch.__version__, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        info["load_avg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def emit(result: dict) -> None:
    """The benchmark's one JSON line."""
    print(json.dumps(result, sort_keys=False), flush=True)
