"""The progress a researcher reads while a job runs: optimiser steps towards `max_steps` (epochs
too when epochs rule), with the rate and ETA of the whole run rather than of one epoch.

On a terminal one line is redrawn in place; anywhere else (a log file, a batch job, a pipe) a
plain line is printed every few percent of the run or every 30 s, whichever comes first:

    step 200/5000 (4%) 12.3 it/s loss 2.31 ETA 6m30s

Validation, test and predict show a count of batches. Every line is built by `progress_line`,
a pure function of numbers.
"""
from __future__ import annotations

import math
import shutil
import sys
import time
from typing import Any

from lightning.pytorch.callbacks.progress import ProgressBar

# the metric prefix an evaluation loop's prog_bar metrics carry in this codebase's modules
_STAGE_PREFIX = {"validation": "val/", "test": "test/", "predict": "predict/"}


def format_duration(seconds: float) -> str:
    """45s, 6m30s, 2h05m, 3d04h: two units at most, as precise as an ETA deserves."""
    total = max(int(round(seconds)), 0)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_rate(steps_per_second: float) -> str:
    """12.3 it/s, or 2.50 s/it for steps slower than a second."""
    if steps_per_second >= 1:
        value, unit = steps_per_second, "it/s"
    else:
        value, unit = 1 / steps_per_second, "s/it"
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    return f"{value:.{digits}f} {unit}"


def eta_seconds(step: int, total: int, steps_per_second: float) -> float:
    """Seconds until `total` steps at the given rate."""
    return max(total - step, 0) / steps_per_second


def progress_line(
    step: int,
    total: int | None,
    steps_per_second: float | None,
    metrics: dict[str, float],
    epoch: int | None = None,
    max_epochs: int | None = None,
    done_in: float | None = None,
    bar_width: int = 0,
) -> str:
    """One progress line: `[epoch e/E] step k/N (p%) [rate] [metric value ...] [ETA t | done in t]`.

    total: the run's optimiser steps, None when unknown (no percentage or ETA then); epoch is
    1-based and shown with max_epochs when epochs rule; done_in: the run is over, after that many
    seconds; bar_width: the width of a drawn bar (terminals only), 0 for none."""
    parts = []
    if epoch is not None and max_epochs:
        parts.append(f"epoch {epoch}/{max_epochs}")
    if total:
        fraction = min(step / total, 1.0)
        parts.append(f"step {step}/{total}")
        if bar_width:
            filled = int(fraction * bar_width)
            parts.append("[" + "#" * filled + "." * (bar_width - filled) + "]")
        parts.append(f"({math.floor(fraction * 100)}%)")
    else:
        parts.append(f"step {step}")
    if steps_per_second:
        parts.append(format_rate(steps_per_second))
    parts += [f"{name} {value:.4g}" for name, value in metrics.items()]
    if done_in is not None:
        parts.append(f"done in {format_duration(done_in)}")
    elif total and steps_per_second:
        parts.append(f"ETA {format_duration(eta_seconds(step, total, steps_per_second))}")
    return " ".join(parts)


def count_line(name: str, done: int, total: int | None, metrics: dict[str, float], done_in: float | None = None) -> str:
    """An evaluation loop's line: `validation 12/40 batches [in 3s] [val/metric value ...]`."""
    parts = [f"{name} {done}/{total} batches" if total else f"{name} {done} batches"]
    if done_in is not None:
        parts.append(f"in {format_duration(done_in)}")
    parts += [f"{key} {value:.4g}" for key, value in metrics.items()]
    return " ".join(parts)


def _finite_total(value: float | int | list | None) -> int | None:
    values = value if isinstance(value, list) else [value]
    if not values or any(v is None or v == float("inf") or v < 0 for v in values):
        return None
    return int(sum(values)) or None


class StepProgressBar(ProgressBar):
    """Counts optimiser steps (`trainer.global_step`) towards the run's total
    (`trainer.estimated_stepping_batches`: `max_steps`, or epochs x steps per epoch).

    every_n_steps: where output is not a terminal, a line every this many steps (default: every 5%
    of the run); every_seconds: and at least this often; interactive: redraw one line in place
    (default: when stdout is a terminal). The rate is optimiser steps per second of wall time
    since the first step of this process, validation included, so the ETA holds for the run."""

    def __init__(self, every_n_steps: int | None = None, every_seconds: float = 30.0, interactive: bool | None = None):
        super().__init__()
        self.every_n_steps = every_n_steps
        self.every_seconds = every_seconds
        self.interactive = interactive
        self.refresh_seconds = 0.25  # how often a terminal line is redrawn
        self._enabled = True
        self._width = 0  # of the line drawn in place, 0 when none is
        self._total: int | None = None
        self._every = 1
        self._seen_step = -1
        self._timed_from: tuple[float, int] | None = None  # (time, step) at the end of the first step
        self._train_started = self._last_output = 0.0
        self._eval: dict[str, Any] | None = None

    # ProgressBar's contract
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, **kwargs: Any) -> None:
        self._clear()
        print(*args, **kwargs)

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # disables the bar on ranks other than 0
        if self.interactive is None:
            self.interactive = sys.stdout.isatty()

    # training
    def on_train_start(self, trainer, pl_module) -> None:
        self._total = _finite_total(trainer.estimated_stepping_batches)
        self._every = self.every_n_steps or (max(self._total // 20, 1) if self._total else max(trainer.log_every_n_steps, 1))
        self._seen_step = trainer.global_step
        self._timed_from = None
        self._train_started = time.monotonic()
        self._last_output = -math.inf if self.interactive else time.monotonic()  # a terminal shows the first step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if not self._enabled or step == self._seen_step:  # accumulating gradients: no optimiser step yet
            return
        self._seen_step = step
        now = time.monotonic()
        if self._timed_from is None:
            self._timed_from = (now, step)  # the first step pays for warm-up: the rate starts after it
        if self.interactive:
            if now - self._last_output >= self.refresh_seconds:
                self._draw(self._train_line(trainer, now))
                self._last_output = now
        elif step != self._total and (step % self._every == 0 or now - self._last_output >= self.every_seconds):
            # the last step's line comes from on_train_end, after the final validation
            self._emit(self._train_line(trainer, now))
            self._last_output = now

    def on_train_end(self, trainer, pl_module) -> None:
        if self._enabled:
            now = time.monotonic()
            self._emit(self._train_line(trainer, now, done_in=now - self._train_started))

    def _train_line(self, trainer, now: float, done_in: float | None = None) -> str:
        rate = None
        if self._timed_from is not None and now > self._timed_from[0] and trainer.global_step > self._timed_from[1]:
            rate = (trainer.global_step - self._timed_from[1]) / (now - self._timed_from[0])
        metrics = {name.removeprefix("train/"): value for name, value in trainer.progress_bar_metrics.items()
                   if isinstance(value, (int, float)) and not name.startswith(("val/", "test/", "predict/"))}
        epochs_rule = trainer.max_steps == -1 and trainer.max_epochs is not None and trainer.max_epochs > 0
        return progress_line(trainer.global_step, self._total, rate, metrics,
                             # current_epoch counts finished epochs once the last one is over
                             epoch=min(trainer.current_epoch + 1, trainer.max_epochs) if epochs_rule else None,
                             max_epochs=trainer.max_epochs if epochs_rule else None,
                             done_in=done_in, bar_width=20 if self.interactive else 0)

    # evaluation: a count of batches
    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._start_eval("sanity check", trainer.num_sanity_val_batches)

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        self._eval = None
        self._clear()

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._start_eval("validation", trainer.num_val_batches)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._count_eval()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._end_eval(trainer, "validation")

    def on_test_start(self, trainer, pl_module) -> None:
        self._start_eval("test", trainer.num_test_batches)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._count_eval()

    def on_test_end(self, trainer, pl_module) -> None:
        self._end_eval(trainer, "test")

    def on_predict_start(self, trainer, pl_module) -> None:
        self._start_eval("predict", trainer.num_predict_batches)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._count_eval()

    def on_predict_end(self, trainer, pl_module) -> None:
        self._end_eval(trainer, "predict")

    def _start_eval(self, name: str, batches) -> None:
        now = time.monotonic()
        self._eval = {"name": name, "done": 0, "total": _finite_total(batches), "started": now, "last": now}

    def _count_eval(self) -> None:
        if not self._enabled or self._eval is None:
            return
        state = self._eval
        state["done"] += 1
        now = time.monotonic()
        if now - state["last"] >= (self.refresh_seconds if self.interactive else self.every_seconds):
            line = count_line(state["name"], state["done"], state["total"], {})
            if self.interactive:
                self._draw(line)
            else:
                self._emit(line)
            state["last"] = now

    def _end_eval(self, trainer, stage: str) -> None:
        state, self._eval = self._eval, None
        if not self._enabled or state is None:
            return
        prefix = _STAGE_PREFIX[stage]
        metrics = {name: value for name, value in trainer.progress_bar_metrics.items()
                   if name.startswith(prefix) and isinstance(value, (int, float))}
        name = state["name"]
        if stage == "validation" and trainer.state.fn == "fit":
            name = f"validation at step {trainer.global_step}:"
        self._emit(count_line(name, state["done"], state["total"], metrics, done_in=time.monotonic() - state["started"]))

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._clear()

    # output: stdout, looked up at each write (so that redirections made after setup apply)
    def _draw(self, line: str) -> None:
        """Redraw the terminal's current line in place."""
        columns = shutil.get_terminal_size().columns - 1
        line = line[:columns]
        sys.stdout.write("\r" + line.ljust(self._width))
        sys.stdout.flush()
        self._width = len(line)

    def _emit(self, line: str) -> None:
        """Print a line that stays (over the line drawn in place, if any)."""
        if self._width:
            sys.stdout.write("\r" + " " * self._width + "\r")
            self._width = 0
        print(line, flush=True)

    def _clear(self) -> None:
        if self._width:
            sys.stdout.write("\r" + " " * self._width + "\r")
            sys.stdout.flush()
            self._width = 0
