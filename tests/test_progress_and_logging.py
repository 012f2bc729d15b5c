"""What a researcher sees: TensorBoard + CSV logs by default, step progress lines, no Lightning tips."""
import csv
import logging
from pathlib import Path

import pytest

from tiny import tiny_pretrain_args
from vlbert.cli import main as vlbert
from vlbert.training.progress import format_duration, format_rate, progress_line

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # configs/ paths are relative to the repo root


def logged_pretrain_args(world, root, **extra) -> list[str]:
    """tiny_pretrain_args with this project's defaults for logging and progress left alone."""
    args = tiny_pretrain_args(world, root, **{"trainer.max_steps": 4, "trainer.val_check_interval": 2,
                                              "trainer.limit_val_batches": 1, "trainer.log_every_n_steps": 1})
    for flag in ("--trainer.logger", "--trainer.enable_progress_bar"):
        at = args.index(flag)
        del args[at:at + 2]
    for key, value in extra.items():
        args += [f"--{key}", str(value)]
    return args


@pytest.fixture
def lightning_messages():
    """What Lightning logs (rank_zero_info) during a test, whichever handlers it has otherwise."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("lightning.pytorch")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_fit_logs_tensorboard_and_csv_in_one_run_folder(tiny_world, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    assert vlbert(["pretrain", "fit", *logged_pretrain_args(tiny_world, tmp_path)]) == 0
    run_dir, = (tmp_path / "lightning_logs").iterdir()
    assert run_dir.name == "version_0"
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert (run_dir / "config.yaml").is_file() and (run_dir / "hparams.yaml").is_file()
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tensorboard_loss = [event.value for event in events.Scalars("train/loss")]
    assert len(tensorboard_loss) == 4 and "val/mlm_loss" in events.Tags()["scalars"]
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    csv_loss = [float(row["train/loss"]) for row in rows if row["train/loss"]]
    assert csv_loss == pytest.approx(tensorboard_loss)
    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["model/hidden_size"].number_value == 32


def test_logger_false_writes_no_logs_and_no_progress_off_prints_no_steps(tiny_world, tmp_path, capsys):
    assert vlbert(["pretrain", "fit", *tiny_pretrain_args(tiny_world, tmp_path, **{"trainer.max_steps": 2})]) == 0
    assert not list(tmp_path.rglob("events.out.tfevents.*")) and not list(tmp_path.rglob("metrics.csv"))
    assert "step 2/2" not in capsys.readouterr().out  # --trainer.enable_progress_bar false


def test_another_logger_from_the_command_line(tiny_world, tmp_path):
    args = logged_pretrain_args(tiny_world, tmp_path, **{"trainer.logger": "CSVLogger",
                                                         "trainer.logger.save_dir": tmp_path / "csv"})
    assert vlbert(["pretrain", "fit", *args]) == 0
    assert (tmp_path / "csv" / "lightning_logs" / "version_0" / "metrics.csv").is_file()
    assert not list(tmp_path.rglob("events.out.tfevents.*"))


def test_output_not_a_terminal_prints_step_lines_and_no_tips(tiny_world, tmp_path, capfd, lightning_messages):
    assert vlbert(["pretrain", "fit", *logged_pretrain_args(tiny_world, tmp_path)]) == 0
    out, err = capfd.readouterr()
    lines = [line for line in out.splitlines() if line.startswith(("step ", "validation "))]
    assert [line.split(" (")[0] for line in lines if line.startswith("step ")] == [f"step {k}/4" for k in (1, 2, 3, 4)]
    assert lines[2].startswith("validation at step 2: 1/1 batches in")
    assert lines[-1].startswith("step 4/4 (100%)") and "loss " in lines[-1] and "done in" in lines[-1]
    assert lines[-2].startswith("validation at step 4:")
    assert "it/s" in lines[-3] and "ETA" in lines[-3]  # step 3: rate and ETA once a step is timed
    assert "Epoch" not in out and "\r" not in out
    messages = [record.getMessage() for record in lightning_messages]
    assert any("GPU available" in message for message in messages)  # Lightning's other messages stay
    assert not any("Tip:" in message for message in messages)
    assert "Tip:" not in out + err


def test_a_progress_bar_from_the_config_replaces_the_default(tiny_world, tmp_path, capsys):
    args = logged_pretrain_args(tiny_world, tmp_path, **{"trainer.logger": "false"})
    bar = ["--trainer.callbacks+=vlbert.training.progress.StepProgressBar", "--trainer.callbacks.interactive=true"]
    assert vlbert(["pretrain", "fit", *args, *bar]) == 0
    out = capsys.readouterr().out
    assert "\rstep " in out and out.count("done in") == 1  # one bar, redrawn in place


def test_durations_rates_and_lines_on_hand_made_numbers():
    assert [format_duration(s) for s in (0, 45.4, 390, 7500, 3 * 86400 + 4 * 3600 + 59)] == ["0s", "45s", "6m30s", "2h05m", "3d04h"]
    assert [format_rate(r) for r in (250.4, 12.34, 1.5, 0.4)] == ["250 it/s", "12.3 it/s", "1.50 it/s", "2.50 s/it"]
    assert progress_line(200, 5000, 12.3, {"loss": 2.3141}) == "step 200/5000 (4%) 12.3 it/s loss 2.314 ETA 6m30s"
    assert progress_line(30, 100, 2.0, {}, epoch=1, max_epochs=10) == "epoch 1/10 step 30/100 (30%) 2.00 it/s ETA 35s"
    assert progress_line(100, 100, 5.0, {"loss": 0.5}, done_in=20) == "step 100/100 (100%) 5.00 it/s loss 0.5 done in 20s"
    assert progress_line(7, None, None, {}) == "step 7"  # neither max_steps nor a finite epoch: no total, no ETA
    assert progress_line(1, 3, None, {}) == "step 1/3 (33%)"  # no rate before a step is timed
    assert progress_line(5, 10, None, {}, bar_width=4) == "step 5/10 [##..] (50%)"
