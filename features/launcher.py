"""Which shard a `vlbert extract` process takes when a launcher started it: torchrun (and any
torch.distributed launcher: RANK, WORLD_SIZE, LOCAL_RANK) or SLURM's srun (SLURM_PROCID,
SLURM_STEP_NUM_TASKS, SLURM_LOCALID). One command per node (torchrun) or per job step (srun) then
extracts every shard, each process its own, exactly as `--num_shards K --shard_index i` would.

Only srun's step variables count: inside an sbatch script without srun, SLURM_NTASKS may say 4
while a single process runs, which would silently extract a quarter of the images.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from vlbert.errors import InputError


@dataclass(frozen=True)
class LaunchedShard:
    """This process's shard and the accelerator index on its node."""

    shard_index: int
    num_shards: int
    local_rank: int
    launcher: str  # "torchrun" or "srun"


def _integer(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise InputError(f"environment variable {name}={environ[name]!r} is not an integer; "
                         "was this process started by torchrun / srun?") from None


def launched_shard(environ: Mapping[str, str] | None = None) -> LaunchedShard | None:
    """The launcher's rank and world size as a shard, or None when no launcher started this process
    (or it started only one)."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" in environ and "RANK" in environ:
        shard = LaunchedShard(_integer(environ, "RANK"), _integer(environ, "WORLD_SIZE"),
                              _integer(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else 0, "torchrun")
    elif "SLURM_STEP_NUM_TASKS" in environ and "SLURM_PROCID" in environ:
        shard = LaunchedShard(_integer(environ, "SLURM_PROCID"), _integer(environ, "SLURM_STEP_NUM_TASKS"),
                              _integer(environ, "SLURM_LOCALID") if "SLURM_LOCALID" in environ else 0, "srun")
    else:
        return None
    if shard.num_shards < 1 or not 0 <= shard.shard_index < shard.num_shards:
        raise InputError(f"{shard.launcher} gave rank {shard.shard_index} of world size {shard.num_shards}; "
                         "expected 0 <= rank < world size")
    return shard if shard.num_shards > 1 else None


def resolve_shard(num_shards: int | None, shard_index: int | None, environ: Mapping[str, str] | None = None
                  ) -> tuple[int, int, LaunchedShard | None]:
    """(num_shards, shard_index, launcher shard or None): the flags when given, else the launcher's,
    else one shard. Flags that disagree with the launcher are an error, not a guess."""
    launched = launched_shard(environ)
    if launched is None:
        return (1 if num_shards is None else num_shards), (0 if shard_index is None else shard_index), None
    if num_shards is not None and shard_index is not None and (num_shards, shard_index) != (launched.num_shards, launched.shard_index):
        raise InputError(f"--num_shards {num_shards} --shard_index {shard_index} disagree with {launched.launcher}'s "
                         f"rank {launched.shard_index} of {launched.num_shards}; drop the flags under a launcher")
    if (num_shards is None) != (shard_index is None):
        raise InputError("give both --num_shards and --shard_index, or neither (under torchrun / srun they come from the launcher)")
    return launched.num_shards, launched.shard_index, launched


def launched_device(device: str, launched: LaunchedShard | None, cuda_available: bool) -> str:
    """`device: auto` (or `cuda`) under a launcher is this process's GPU on its node, cuda:LOCAL_RANK."""
    if launched is None or not cuda_available or device not in ("auto", "cuda"):
        return device
    return f"cuda:{launched.local_rank}"
