"""The cluster commands of docs/scaling.md, run on CPU: torchrun and srun (simulated by its
environment) starting 2 DDP ranks of `vlbert pretrain fit`; `vlbert extract` under torchrun."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny import tiny_pretrain_args

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def ddp_args(world, root: Path) -> list[str]:
    args = tiny_pretrain_args(world, root, **{
        "trainer.max_steps": 3, "trainer.devices": 2, "trainer.strategy": "ddp", "trainer.limit_val_batches": 2,
        "trainer.val_check_interval": 3, "model.export_dir": root / "export"})
    return [*args, "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps=3",
            "--trainer.callbacks.filename={step}"]


def check_run(root: Path, runs: list[subprocess.CompletedProcess]) -> None:
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    checkpoints = list(root.rglob("step=3.ckpt"))
    assert len(checkpoints) == 1
    assert torch.load(checkpoints[0], map_location="cpu", weights_only=True)["global_step"] == 3
    assert (root / "export" / "model.safetensors").exists()


@pytest.mark.slow
def test_pretraining_under_torchrun(tiny_world, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "vlbert", "pretrain", "fit",
                          *ddp_args(tiny_world, tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert "MEMBER: 2/2" in run.stderr + run.stdout or "world_size=2" in run.stderr + run.stdout, run.stderr[-2000:]
    check_run(tmp_path, [run])


@pytest.mark.slow
def test_pretraining_as_srun_starts_it(tiny_world, tmp_path):
    """What `srun --ntasks-per-node 2 vlbert pretrain fit ...` does on one node: two processes, each
    with srun's variables; Lightning's SLURMEnvironment takes rank and world size from them."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_NNODES": "1",
             "SLURM_NODEID": "0", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "vlbert-pretrain",
             "SLURM_NODELIST": "localhost", "SLURM_STEP_NODELIST": "localhost", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "vlbert", "pretrain", "fit", *ddp_args(tiny_world, tmp_path), "--trainer.logger", "null"]
    ranks = [subprocess.Popen(command, cwd=REPO, env={**base, **slurm, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    runs = []
    for process in ranks:
        out, err = process.communicate(timeout=300)
        runs.append(subprocess.CompletedProcess(command, process.returncode, out, err))
    for rank, run in enumerate(runs):  # each process is one rank of two
        assert f"MEMBER: {rank + 1}/2" in run.stderr + run.stdout, run.stderr[-2000:]
    check_run(tmp_path, runs)
    assert (tmp_path / "lightning_logs" / "version_4242").is_dir()  # named after the SLURM job


@pytest.mark.slow
def test_extraction_under_torchrun_equals_manual_shards(tiny_world, tmp_path):
    import shutil

    import numpy as np

    from vlbert.cli import main as vlbert
    from vlbert.featstore import FeatureStore

    images = tmp_path / "images"
    images.mkdir()
    for image_id in tiny_world.image_ids("train")[:6]:
        shutil.copy(tiny_world.image_path(image_id), images)
    common = ["--config", str(REPO / "configs/extract/tiny.yaml"), "--images", str(images), "--progress", "false"]
    for shard in range(2):
        assert vlbert(["extract", *common, "--output", str(tmp_path / "manual" / "feats.h5"),
                       "--num_shards", "2", "--shard_index", str(shard)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "vlbert", "extract", *common,
                          "--output", str(tmp_path / "launched" / "feats.h5")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "torchrun: shard 1 of 2" in run.stderr
    names = sorted(p.name for p in (tmp_path / "manual").glob("*.h5"))
    assert names == ["feats.shard00000-of-00002.h5", "feats.shard00001-of-00002.h5"]
    assert sorted(p.name for p in (tmp_path / "launched").glob("*.h5")) == names
    for name in names:
        manual, launched = FeatureStore(tmp_path / "manual" / name), FeatureStore(tmp_path / "launched" / name)
        assert sorted(manual.ids) == sorted(launched.ids) and len(manual.ids) > 0
        for image_id in manual.ids:
            assert np.array_equal(manual[image_id].features, launched[image_id].features)
    # the shard set reads as one store, by folder, glob or manifest
    (tmp_path / "launched" / "shards.json").write_text('{"shards": ["%s", "%s"]}' % tuple(names))
    for source in (tmp_path / "launched", str(tmp_path / "launched" / "feats.shard*.h5"), tmp_path / "launched" / "shards.json"):
        assert sorted(FeatureStore(source).ids) == sorted(str(i) for i in tiny_world.image_ids("train")[:6])
