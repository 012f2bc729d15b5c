"""`vlbert extract` under torchrun / srun: the shard comes from the launcher's environment."""
import pytest

from vlbert.errors import InputError
from vlbert.features.launcher import launched_device, launched_shard, resolve_shard


def test_torchrun_and_srun_environments_give_the_shard():
    torchrun = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    shard = launched_shard(torchrun)
    assert (shard.shard_index, shard.num_shards, shard.local_rank, shard.launcher) == (5, 8, 1, "torchrun")
    srun = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "3", "SLURM_NTASKS": "4"}
    shard = launched_shard(srun)
    assert (shard.shard_index, shard.num_shards, shard.local_rank, shard.launcher) == (3, 4, 3, "srun")


def test_no_launcher_one_process_or_an_sbatch_script_without_srun_is_one_shard():
    assert launched_shard({}) is None
    assert launched_shard({"RANK": "0", "WORLD_SIZE": "1"}) is None
    # sbatch --ntasks 4 running the command once: SLURM_NTASKS says 4, but only srun's step variables count
    assert launched_shard({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"}) is None
    assert resolve_shard(None, None, {}) == (1, 0, None)
    assert resolve_shard(4, 2, {}) == (4, 2, None)


def test_flags_and_launcher_must_agree():
    environ = {"RANK": "1", "WORLD_SIZE": "2"}
    assert resolve_shard(None, None, environ)[:2] == (2, 1)
    assert resolve_shard(2, 1, environ)[:2] == (2, 1)
    with pytest.raises(InputError, match="disagree with torchrun's rank 1 of 2"):
        resolve_shard(4, 1, environ)
    with pytest.raises(InputError, match="give both --num_shards and --shard_index"):
        resolve_shard(2, None, environ)
    with pytest.raises(InputError, match="RANK='x' is not an integer"):
        launched_shard({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(InputError, match="rank 3 of world size 2"):
        launched_shard({"RANK": "3", "WORLD_SIZE": "2"})


def test_each_process_takes_its_own_gpu():
    shard = launched_shard({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert launched_device("auto", shard, cuda_available=True) == "cuda:1"
    assert launched_device("cuda", shard, cuda_available=True) == "cuda:1"
    assert launched_device("cuda:3", shard, cuda_available=True) == "cuda:3"  # the user's choice stands
    assert launched_device("auto", shard, cuda_available=False) == "auto"
    assert launched_device("auto", None, cuda_available=True) == "auto"
