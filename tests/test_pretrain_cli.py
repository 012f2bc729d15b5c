"""`vlbert pretrain` end to end: fit from YAML, saved config, exact resume, export, DDP, bad input."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tiny import refused, tiny_pretrain_args
from vlbert.cli import main as vlbert
from vlbert.featstore import FeatureStoreError, FeatureWriter, FeatureStore

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # configs/ paths are relative to the repo root


def checkpoint_every(steps: int) -> list[str]:
    return [
        "--trainer.callbacks+=ModelCheckpoint",
        f"--trainer.callbacks.every_n_train_steps={steps}",
        "--trainer.callbacks.save_top_k=-1",
        "--trainer.callbacks.filename={step}",
    ]


def test_fit_from_yaml_saves_config_checkpoint_and_export(tiny_world, tmp_path):
    args = tiny_pretrain_args(tiny_world, tmp_path, **{"trainer.max_steps": 4, "trainer.val_check_interval": 2, "model.export_dir": tmp_path / "export"})
    assert vlbert(["pretrain", "fit", *args, *checkpoint_every(4)]) == 0
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["model"]["model"]["hidden_size"] == 32 and saved["data"]["batch_size"] == 8
    checkpoint_path = next(tmp_path.rglob("step=4.ckpt"))
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4
    assert checkpoint["hyper_parameters"]["model"]["hidden_size"] == 32  # the resolved config travels with it
    assert checkpoint["vlbert_features"]["feature_dim"] == 64
    assert checkpoint["vlbert_job"] == "pretrain" and "export_dir" not in checkpoint["hyper_parameters"]
    assert (tmp_path / "export" / "model.safetensors").exists()
    assert vlbert(["export", "--checkpoint", str(checkpoint_path), "--out", str(tmp_path / "exported")]) == 0
    exported = load_file(tmp_path / "exported" / "model.safetensors")
    at_end = load_file(tmp_path / "export" / "model.safetensors")
    assert exported.keys() == at_end.keys()
    assert all(torch.equal(exported[k], at_end[k]) for k in exported)
    assert (tmp_path / "exported" / "tokenizer_config.json").exists()


@pytest.mark.parametrize("mixing", ["sample", "sum"])
def test_resume_mid_epoch_matches_an_uninterrupted_run(tiny_world, tmp_path, mixing):
    common = {"trainer.max_steps": 6, "trainer.val_check_interval": 100, "trainer.limit_val_batches": 0,
              "model.objectives.mixing": mixing}
    straight = tiny_pretrain_args(tiny_world, tmp_path / "a", **common, **{"model.export_dir": tmp_path / "a_out"})
    assert vlbert(["pretrain", "fit", *straight, *checkpoint_every(3)]) == 0
    step3 = next((tmp_path / "a").rglob("step=3.ckpt"))
    first_export = (tmp_path / "a_out" / "model.safetensors").stat().st_mtime_ns
    resumed = tiny_pretrain_args(tiny_world, tmp_path / "b", **common, **{"model.export_dir": tmp_path / "b_out"})
    assert vlbert(["pretrain", "fit", *resumed, *checkpoint_every(3), f"--ckpt_path={step3}"]) == 0
    # the resumed run exports where its own command line says, never to the first run's export_dir
    assert (tmp_path / "a_out" / "model.safetensors").stat().st_mtime_ns == first_export
    final = torch.load(next((tmp_path / "b").rglob("step=6.ckpt")), map_location="cpu", weights_only=True)
    assert final["global_step"] == 6  # the step count continued from 3
    a, b = load_file(tmp_path / "a_out" / "model.safetensors"), load_file(tmp_path / "b_out" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)


def test_validate_reports_every_objective(tiny_world, tmp_path, capsys):
    args = tiny_pretrain_args(tiny_world, tmp_path, **{"model.objectives.mrc": 1.0})
    assert vlbert(["pretrain", "validate", *args]) == 0
    out = capsys.readouterr().out
    for metric in ("val/mlm_acc", "val/itm_acc", "val/mrc_acc", "val/mrfr_loss", "val/mrc_kl_loss"):
        assert metric in out


def test_missing_feature_ids_fail_before_training(tiny_world, tmp_path, capsys):
    store = FeatureStore(tiny_world.features_path)
    with FeatureWriter(tmp_path / "partial.h5", store.feature_dim, store.num_classes) as writer:
        for image_id in store.ids[:10]:
            writer.add(store[image_id])
    args = tiny_pretrain_args(tiny_world, tmp_path, **{"data.features": tmp_path / "partial.h5", "trainer.max_steps": 2})
    refused(capsys, ["pretrain", "fit", *args], r"image id\(s\) used by train annotations .* have no features")
    assert not list(tmp_path.rglob("*.ckpt"))


def test_wrong_feature_dimension_fails_before_training(tiny_world, tmp_path, capsys):
    args = tiny_pretrain_args(tiny_world, tmp_path, **{"model.model.region_feature_dim": 2048, "trainer.max_steps": 2})
    refused(capsys, ["pretrain", "fit", *args], "64-d region features but model.model.region_feature_dim expects 2048")


def test_the_optimiser_is_set_one_way(tiny_world, tmp_path, capsys):
    """model.optimization sets the optimiser; LightningCLI's --optimizer / --lr_scheduler, which
    would silently replace it, are not offered."""
    args = tiny_pretrain_args(tiny_world, tmp_path, **{"optimizer": "torch.optim.SGD", "trainer.max_steps": 1})
    with pytest.raises(SystemExit):
        vlbert(["pretrain", "fit", *args])
    assert "optimizer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        vlbert(["pretrain", "fit", "--help"])
    help_text = capsys.readouterr().out
    assert "--model.optimization.lr" in help_text and "--optimizer" not in help_text and "--lr_scheduler" not in help_text


def test_unknown_config_key_is_refused(tiny_world, tmp_path, capsys):
    args = tiny_pretrain_args(tiny_world, tmp_path, **{"model.model.hiden_size": 32})
    with pytest.raises(SystemExit):
        vlbert(["pretrain", "fit", *args])
    assert "hiden_size" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_cpu_ddp(tiny_world, tmp_path):
    args = tiny_pretrain_args(tiny_world, tmp_path, **{
        "trainer.max_steps": 3, "trainer.devices": 2, "trainer.strategy": "ddp", "trainer.limit_val_batches": 2,
        "trainer.val_check_interval": 3, "model.export_dir": tmp_path / "export"})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = subprocess.run([sys.executable, "-m", "vlbert.cli", "pretrain", "fit", *args, *checkpoint_every(3)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "world_size=2" in run.stderr + run.stdout or "MEMBER: 2/2" in run.stderr + run.stdout
    checkpoint = torch.load(next(tmp_path.rglob("step=3.ckpt")), map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3
    assert (tmp_path / "export" / "model.safetensors").exists()


def test_bf16_mixed_precision_with_accumulation_and_clipping(tiny_world, tmp_path):
    args = tiny_pretrain_args(tiny_world, tmp_path, **{
        "trainer.max_steps": 2, "trainer.precision": "bf16-mixed", "trainer.accumulate_grad_batches": 2,
        "trainer.gradient_clip_val": 1.0, "trainer.limit_val_batches": 1, "trainer.val_check_interval": 2,
        "model.objectives.mixing": "sum"})
    assert vlbert(["pretrain", "fit", *args, *checkpoint_every(2)]) == 0
    checkpoint = torch.load(next(tmp_path.rglob("step=2.ckpt")), map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 2  # 4 batches, 2 optimizer steps
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())
