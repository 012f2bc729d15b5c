"""`vlbert plot` (curves from a run's CSV or TensorBoard logs) and the demo's summary page, on
hand-made logs and results."""
from __future__ import annotations

import csv
import re

import pytest
from PIL import Image, ImageStat

from vlbert.cli import main as vlbert_main
from vlbert.tasks.demo_summary import write_summary
from vlbert.training.plots import (
    PlotError,
    find_log_dir,
    group_families,
    main,
    read_csv_metrics,
    read_event_metrics,
    read_metrics,
    select_metrics,
)

# what a CSVLogger writes: one row per logging call, a key's cell empty where it was not logged
CSV_ROWS = [
    {"epoch": 0, "step": 0, "val/itm_acc": 0.5, "val/mlm_acc": 0.01},
    {"epoch": 0, "step": 19, "train/loss": 5.5, "train/mlm_loss": 5.5},
    {"epoch": 0, "step": 39, "train/loss": 0.7, "train/mlm_loss": 4.9},
    {"epoch": 1, "step": 49, "val/itm_acc": 0.6, "val/mlm_acc": 0.3},
    {"epoch": 1, "step": 59, "train/loss": 4.1, "train/mlm_loss": 4.1},
    {"epoch": 1, "step": 59, "test/pairs_per_second": 8000.0},
]
EVENTS = {"train/loss": [(0, 2.0), (10, 1.5), (20, 1.25)], "val/vqa_acc": [(10, 40.0), (20, 55.5)]}


def write_csv(folder, rows=CSV_ROWS):
    folder.mkdir(parents=True, exist_ok=True)
    columns = ["epoch", "step"] + sorted({k for row in rows for k in row} - {"epoch", "step"})
    with open(folder / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return folder


def write_events(folder):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder))
    for name, points in EVENTS.items():
        for step, value in points:
            writer.add_scalar(name, value, step)
    writer.add_scalar("epoch", 0, 20)  # Lightning logs the epoch beside the metrics
    writer.close()
    return folder


def assert_png(path, min_size=(600, 300)):
    image = Image.open(path).convert("L")
    assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
    low, high = image.getextrema()
    assert low < 100 and high > 200 and ImageStat.Stat(image).stddev[0] > 10  # drawn on, not blank


def test_csv_series_skip_empty_cells(tmp_path):
    metrics = read_csv_metrics(write_csv(tmp_path) / "metrics.csv")
    assert set(metrics) == {"train/loss", "train/mlm_loss", "val/itm_acc", "val/mlm_acc", "test/pairs_per_second"}
    assert metrics["train/mlm_loss"].steps == [19, 39, 59]
    assert metrics["train/mlm_loss"].values == [5.5, 4.9, 4.1]
    assert metrics["val/itm_acc"].steps == [0, 49] and metrics["val/itm_acc"].values == [0.5, 0.6]


def test_event_series_equal_what_was_written(tmp_path):
    metrics = read_event_metrics(write_events(tmp_path))
    assert set(metrics) == set(EVENTS)  # "epoch" is not a metric
    for name, points in EVENTS.items():
        assert metrics[name].steps == [step for step, _ in points]
        assert metrics[name].values == pytest.approx([value for _, value in points])


def test_run_dir_forms_and_newest_version(tmp_path):
    write_csv(tmp_path / "lightning_logs" / "version_0", CSV_ROWS[:2])
    newest = write_csv(tmp_path / "lightning_logs" / "version_10")
    for run_dir in (tmp_path, tmp_path / "lightning_logs", newest):
        assert find_log_dir(run_dir) == newest
    source, metrics = read_metrics(tmp_path)
    assert source == newest / "metrics.csv" and "val/itm_acc" in metrics


def test_csv_preferred_over_events_in_one_folder(tmp_path):
    write_events(write_csv(tmp_path / "lightning_logs" / "version_0"))
    source, metrics = read_metrics(tmp_path)
    assert source.name == "metrics.csv" and "val/vqa_acc" not in metrics


def test_families_and_selection(tmp_path):
    metrics = read_csv_metrics(write_csv(tmp_path) / "metrics.csv")
    assert list(group_families(metrics)) == [("train", "losses"), ("val", "metrics"), ("test", "throughput")]
    assert list(select_metrics(metrics, ["train/loss", "val/*"])) == ["train/loss", "val/itm_acc", "val/mlm_acc"]
    with pytest.raises(PlotError, match="the run has: .*val/itm_acc"):
        select_metrics(metrics, ["val/nope"])


def test_plot_csv_run(tmp_path, capsys):
    write_csv(tmp_path / "run" / "lightning_logs" / "version_0")
    out = tmp_path / "curves.png"
    assert vlbert_main(["plot", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert_png(out, (1000, 600))  # 3 families: a 2 x 2 grid
    assert capsys.readouterr().out.strip() == f"wrote {out}"


def test_plot_event_run_chosen_metrics(tmp_path):
    write_events(tmp_path / "lightning_logs" / "version_0")
    out = tmp_path / "loss.png"
    assert main([str(tmp_path), "--out", str(out), "--metrics", "train/loss"]) == 0
    assert_png(out)


@pytest.mark.parametrize("case", ["no_logs", "missing_dir", "unknown_metric"])
def test_errors_are_one_line_exit_2(tmp_path, capsys, case):
    write_csv(tmp_path / "run")
    run_dir = {"no_logs": tmp_path / "empty", "missing_dir": tmp_path / "absent", "unknown_metric": tmp_path / "run"}[case]
    (tmp_path / "empty").mkdir()
    assert vlbert_main(["plot", str(run_dir), "--out", str(tmp_path / "x.png"), "--metrics", "val/nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlbert plot: error: ") and "\n" not in err and "Traceback" not in err
    if case == "unknown_metric":
        assert "'val/nope'" in err and "train/loss" in err and "val/itm_acc" in err
    assert not (tmp_path / "x.png").exists()


def demo_results(tmp_path) -> dict:
    """The keys `vlbert demo` prints (from a real 300-image run), its pretraining run in tmp_path."""
    return {
        "seed": 0, "num_images": 300,
        "extraction": {"path": "features.h5", "images": 9, "extracted": 9, "failed": 0, "dim": 1024, "num_classes": 91,
                       "random_detector": True, "weights": "none", "seconds": 1.1},
        "features": {"source": "synthetic feature-level HDF5", "path": "world/features.h5", "dim": 64, "num_classes": 36,
                     "detector_classes": True},
        "pretrain": {"untrained": {"mlm_acc": 0.0, "itm_acc": 0.4, "mrc_kl_acc": 0.0, "mrfr_loss": 1.3595},
                     "pretrained": {"mlm_acc": 0.07, "itm_acc": 0.41, "mrc_kl_acc": 0.3833, "mrfr_loss": 0.8662},
                     "export": str(tmp_path / "pretrain" / "export")},
        "vqa": {"pretrained_all_questions": {"vqa_acc": 51.67, "vqa_acc_number": 57.27, "vqa_acc_other": 40.77, "vqa_acc_yes_no": 71.82},
                "untrained_10pct_questions": {"vqa_acc": 43.33, "vqa_acc_number": 48.18, "vqa_acc_other": 29.23, "vqa_acc_yes_no": 70.91}},
        "retrieval": {"test_images": 9, "test_captions": 45,
                      "before_finetuning": {"i2t_r1": 11.11, "i2t_r5": 44.44, "i2t_r10": 66.67, "t2i_r1": 6.67, "t2i_r5": 51.11,
                                            "t2i_r10": 100.0, "r_mean": 46.67},
                      "finetuned": {"i2t_r1": 44.44, "i2t_r5": 88.89, "i2t_r10": 100.0, "t2i_r1": 42.22, "t2i_r5": 93.33,
                                    "t2i_r10": 100.0, "r_mean": 78.15},
                      "chance": {"i2t_r1": 11.11, "t2i_r1": 11.11, "i2t_r5": 46.14, "t2i_r5": 55.56, "i2t_r10": 73.43, "t2i_r10": 100.0},
                      "pairs_per_second": 7635.1, "export": str(tmp_path / "retrieval" / "export")},
        "seconds": 100.8,
    }


@pytest.mark.parametrize("with_logs", [True, False])
def test_summary_tables_and_images(tmp_path, with_logs):
    if with_logs:
        write_csv(tmp_path / "pretrain" / "lightning_logs" / "version_0")
    path = write_summary(demo_results(tmp_path), tmp_path)
    text = path.read_text()
    assert path == tmp_path / "summary.md"
    for row in ("| MLM accuracy | 0 | 0.07 |", "| MRFR loss | 1.3595 | 0.8662 |",
                "| overall | 51.67 | 43.33 |", "| yes/no | 71.82 | 70.91 |",
                "| image → text R@5 | 44.44 | 88.89 | 46.14 |", "| text → image R@1 | 6.67 | 42.22 | 11.11 |",
                "| mean recall | 46.67 | 78.15 | – |"):
        assert row in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    expected = {"pretrain_metrics.png", "vqa_accuracy.png", "retrieval_recall.png"} | ({"pretrain_curves.png"} if with_logs else set())
    assert set(links) == expected
    for link in links:
        assert_png(tmp_path / link)


def test_no_logs_names_the_runs_below(tmp_path):
    write_csv(tmp_path / "pretrain" / "lightning_logs" / "version_0")
    write_csv(tmp_path / "vqa" / "lightning_logs" / "version_0")
    with pytest.raises(PlotError, match=r"runs in it: .*pretrain, .*vqa$"):
        read_metrics(tmp_path)
