"""Loss and metric curves of a training run, read from its Lightning logs (`vlbert plot`).

    vlbert plot runs/pretrain_tiny --out curves.png
    vlbert plot demo_out/vqa/lightning_logs/version_0 --metrics train/loss 'val/vqa_acc*'

RUN_DIR is a run's `trainer.default_root_dir`, its `lightning_logs` folder or one `version_N`
folder (the newest version is plotted when there are several). The metrics come from the CSVLogger's
metrics.csv, or from TensorBoard event files when a version has no CSV. One subplot per family
(a stage's losses, its other metrics, its throughput), x = the global step.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import math
import re
import sys
from pathlib import Path
from typing import NamedTuple

from vlbert.errors import InputError

# written by Lightning beside the metrics, not metrics themselves
NOT_METRICS = frozenset({"step", "epoch", "hp_metric"})
STAGE_TITLES = {"train": "Training", "val": "Validation", "test": "Test", "predict": "Prediction"}
KIND_ORDER = ("losses", "metrics", "throughput")
STAGE_ORDER = ("train", "val", "test", "predict")


class PlotError(InputError):
    """No logs, nothing logged yet, or a metric the run does not have: one line for the user."""


class Series(NamedTuple):
    """One logged metric: the global steps it was logged at and its values there, by step."""

    steps: list[int]
    values: list[float]


def find_log_dir(run_dir: str | Path) -> Path:
    """The folder holding a run's logs: `run_dir` itself, or its newest `version_N`, directly or
    under `lightning_logs/`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PlotError(f"no such directory: {run_dir}")
    if _has_logs(run_dir):
        return run_dir
    versions = _versions(run_dir)
    if versions:
        return max(versions, key=_version_number)
    # e.g. the demo's folder, which holds one run per stage: say which
    runs = sorted(str(d) for d in run_dir.iterdir() if d.is_dir() and (_has_logs(d) or _versions(d)))
    raise PlotError(f"no metrics.csv or TensorBoard event file in {run_dir}, its version_* "
                    "or its lightning_logs/version_* folders" + (f"; runs in it: {', '.join(runs)}" if runs else ""))


def _versions(run_dir: Path) -> list[Path]:
    for parent in (run_dir, run_dir / "lightning_logs"):
        versions = [d for d in parent.glob("version_*") if d.is_dir() and _has_logs(d)]
        if versions:
            return versions
    return []


def _has_logs(directory: Path) -> bool:
    return (directory / "metrics.csv").is_file() or any(directory.glob("events.out.tfevents.*"))


def _version_number(directory: Path) -> tuple[int, float]:
    match = re.fullmatch(r"version_(\d+)", directory.name)
    return (int(match.group(1)) if match else -1, directory.stat().st_mtime)


def read_csv_metrics(path: str | Path) -> dict[str, Series]:
    """Every metric of a CSVLogger metrics.csv. Rows are sparse (a key has a value only on the steps
    it was logged at); empty cells are skipped."""
    steps: dict[str, list[int]] = {}
    values: dict[str, list[float]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            if not row.get("step"):
                continue
            step = int(float(row["step"]))
            for name, cell in row.items():
                if name is None or name in NOT_METRICS or cell in (None, ""):
                    continue
                steps.setdefault(name, []).append(step)
                values.setdefault(name, []).append(float(cell))
    return {name: _by_step(steps[name], values[name]) for name in sorted(steps)}


def read_event_metrics(directory: str | Path) -> dict[str, Series]:
    """Every scalar in the TensorBoard event files of one folder (all of them, as after a resume)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={SCALARS: 0})  # 0: keep every point
    accumulator.Reload()
    metrics = {}
    for name in sorted(accumulator.Tags()[SCALARS]):
        if name in NOT_METRICS:
            continue
        events = accumulator.Scalars(name)
        metrics[name] = _by_step([e.step for e in events], [float(e.value) for e in events])
    return metrics


def _by_step(steps: list[int], values: list[float]) -> Series:
    order = sorted(range(len(steps)), key=steps.__getitem__)  # stable: repeated steps keep their order
    return Series([steps[i] for i in order], [values[i] for i in order])


def read_metrics(run_dir: str | Path) -> tuple[Path, dict[str, Series]]:
    """(the file or folder read, its metrics): metrics.csv when there is one, else the event files."""
    log_dir = find_log_dir(run_dir)
    csv_path = log_dir / "metrics.csv"
    source = csv_path if csv_path.is_file() else log_dir
    try:
        metrics = read_csv_metrics(source) if source == csv_path else read_event_metrics(source)
    except (ValueError, csv.Error) as error:
        raise PlotError(f"cannot read {source}: {error}") from error
    if not metrics:
        raise PlotError(f"no metrics logged yet in {source}")
    return source, metrics


def select_metrics(metrics: dict[str, Series], names: list[str] | None) -> dict[str, Series]:
    """The metrics asked for, by exact name or shell pattern (`val/*_acc`); all when `names` is None."""
    if not names:
        return dict(metrics)
    chosen: dict[str, Series] = {}
    for name in names:
        matches = [m for m in metrics if fnmatch.fnmatchcase(m, name)] if any(c in name for c in "*?[") else \
            [name] if name in metrics else []
        if not matches:
            raise PlotError(f"no metric {name!r}; the run has: {', '.join(metrics)}")
        chosen.update((m, metrics[m]) for m in matches)
    return chosen


def metric_family(name: str) -> tuple[str, str]:
    """(stage, kind) of a metric name: `val/itm_acc` -> ("val", "metrics"); kinds are losses,
    metrics and throughput, so that curves sharing a subplot share a scale."""
    stage, _, metric = name.rpartition("/")
    kind = "losses" if "loss" in metric else "throughput" if "per_second" in metric else "metrics"
    return stage, kind


def family_title(stage: str, kind: str) -> str:
    if not stage:
        return kind.capitalize()
    return f"{STAGE_TITLES.get(stage, stage)} {kind}"


def group_families(metrics: dict[str, Series]) -> dict[tuple[str, str], dict[str, Series]]:
    """Metrics by family, training first, then validation, test and any other stage."""
    families: dict[tuple[str, str], dict[str, Series]] = {}
    for name, series in metrics.items():
        families.setdefault(metric_family(name), {})[name] = series

    def order(family: tuple[str, str]) -> tuple[int, str, int]:
        stage, kind = family
        rank = STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)
        return rank, stage, KIND_ORDER.index(kind)

    return {family: families[family] for family in sorted(families, key=order)}


def plot_metrics(metrics: dict[str, Series], out: str | Path, title: str | None = None) -> Path:
    """A PNG with one subplot per metric family; returns its path. Drawn on the Agg canvas, without
    pyplot, so that nothing opens a window or touches global matplotlib state."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    families = group_families(metrics)
    columns = 1 if len(families) == 1 else 2
    rows = math.ceil(len(families) / columns)
    figure = Figure(figsize=(6.4 * columns, 3.8 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    # one step axis for every subplot, so that a test point at the last step sits at the right end
    steps = [step for series in metrics.values() for step in series.steps]
    margin = max(max(steps) - min(steps), 1) * 0.03
    for ax, ((stage, kind), members) in zip(axes, families.items()):
        # the total loss first, in grey beneath the objectives' own losses in colour
        for name, series in sorted(members.items(), key=lambda item: item[0] != f"{stage}/loss".lstrip("/")):
            label = name.removeprefix(f"{stage}/") if stage else name
            few = len(series.steps) <= 25  # validation / test points: show each one
            ax.plot(series.steps, series.values, label=label, marker="o" if few else None, markersize=4,
                    linewidth=1.4, **({"color": "0.35", "alpha": 0.7} if label == "loss" and len(members) > 1 else {}))
        ax.set_xlim(min(steps) - margin, max(steps) + margin)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(family_title(stage, kind), fontsize=12)
        ax.set_xlabel("step")
        ax.set_ylabel({"losses": "loss", "throughput": "per second"}.get(kind, "value"))
        ax.grid(alpha=0.3)
        if len(members) > 6:  # many curves: the legend beside the axes, not over them
            ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        else:
            ax.legend(fontsize=9, loc="best")
    for ax in axes[len(families):]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title, fontsize=13)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    return out


def plot_run(run_dir: str | Path, out: str | Path, metrics: list[str] | None = None) -> Path:
    """`vlbert plot` as a function: the curves of a run's logs (or the `metrics` chosen) as a PNG."""
    source, logged = read_metrics(run_dir)
    return plot_metrics(select_metrics(logged, metrics), out, title=_run_title(source))


def _run_title(source: Path) -> str:
    # e.g. "pretrain: lightning_logs/version_0": the run's folder, then the logger's
    folder = source.parent if source.is_file() else source
    parts = folder.parts
    if len(parts) >= 3 and parts[-2] == "lightning_logs":
        return f"{parts[-3]}: lightning_logs/{parts[-1]}"
    return str(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vlbert plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="default_root_dir, lightning_logs or version_N folder of a run")
    parser.add_argument("--out", default="curves.png", help="the PNG to write (default: curves.png)")
    parser.add_argument("--metrics", nargs="+", metavar="NAME",
                        help="metrics to plot, by name or shell pattern (default: every logged metric)")
    args = parser.parse_args(argv)
    try:
        out = plot_run(args.run_dir, args.out, args.metrics)
    except PlotError as error:
        print(f"vlbert plot: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
