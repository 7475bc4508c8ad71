"""How training and evaluation talk to the outside world (dashboard, terminal, tests).

The loop never prints or touches a database itself: it calls a Reporter. The base class does
nothing, so a subclass overrides only what it needs (the dashboard's DbReporter writes
metrics and heartbeats and polls a cancel flag; PrintReporter draws a progress bar).
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from .results import EvalResult, TrainResult

__all__ = ["Reporter", "NullReporter", "PrintReporter", "Heartbeat"]


class Reporter:
    """Callbacks of a training or evaluation run; every method is a no-op here."""

    def on_start(self, info: dict[str, Any]) -> None:
        """``{"start_iteration", "total_iterations", "device", "config"}``."""

    def on_iteration(self, iteration: int, metrics: dict[str, float]) -> None:
        """After each meta-iteration (1-based): inner_loss, inner_accuracy (absent for sine),
        meta_step_size, seconds."""

    def on_validation(self, iteration: int, result: EvalResult) -> None:
        """After each periodic validation."""

    def before_checkpoint(self, iteration: int) -> bool:
        """Just before a checkpoint of ``iteration`` is written; False skips this one.

        A run resumes from whatever checkpoint is on disk, so a reporter that keeps its own
        record of the run (the dashboard's database) must hold everything up to ``iteration``
        before the file exists: a process killed between the two would otherwise resume past
        a gap. A reporter that cannot store it yet returns False; the previous checkpoint stays
        and a resumed run repeats those iterations instead.
        """
        return True

    def on_checkpoint(self, iteration: int, path: str) -> None:
        """After a checkpoint has been written (atomically) to ``path``."""

    def heartbeat(self) -> None:
        """Called at least every 2 s of work: the run is alive."""

    def should_stop(self) -> bool:
        """Polled every meta-iteration and every evaluation task; True stops the run."""
        return False

    def on_end(self, result: TrainResult) -> None:
        """Once, when training returns (finished or stopped)."""


NullReporter = Reporter


class Heartbeat:
    """Calls ``reporter.heartbeat()`` when ``interval`` seconds have passed since the last call.

    The loops call ``beat()`` after every task, which is far more often than needed; this keeps
    the reporter's cost (a database write) bounded while guaranteeing the 2 s promise as long as
    one task takes less than ``2 - interval`` seconds.
    """

    def __init__(self, reporter: Reporter, interval: float = 1.0) -> None:
        self._reporter = reporter
        self._interval = interval
        self._last = time.monotonic()

    def beat(self) -> None:
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._reporter.heartbeat()


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class PrintReporter(Reporter):
    """A one-line progress bar with rate and ETA on stderr, plus a line per validation.

    The bar is redrawn at most every ``refresh`` seconds so that printing never slows
    training down.
    """

    def __init__(
        self, stream: IO[str] | None = None, width: int = 24, refresh: float = 0.2
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.refresh = refresh
        self._total = 0
        self._start_iteration = 0
        self._t0 = time.monotonic()
        self._last_draw = 0.0
        self._last_line = ""

    def on_start(self, info: dict[str, Any]) -> None:
        self._total = int(info.get("total_iterations", 0))
        self._start_iteration = int(info.get("start_iteration", 0))
        self._t0 = time.monotonic()
        resumed = f", resuming at {self._start_iteration}" if self._start_iteration else ""
        device = str(info.get("device"))
        if device.startswith("cuda"):
            device += ", TF32 allowed" if info.get("tf32") else ", IEEE float32"
        self._print(f"training {self._total} meta-iterations on {device}{resumed}")

    def on_iteration(self, iteration: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if now - self._last_draw < self.refresh and iteration < self._total:
            return
        self._last_draw = now
        done = iteration - self._start_iteration
        rate = done / max(now - self._t0, 1e-9)
        left = (self._total - iteration) / rate if rate > 0 else 0.0
        frac = iteration / self._total if self._total else 1.0
        filled = int(round(frac * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        parts = [f"[{bar}] {iteration}/{self._total}", f"loss {metrics.get('inner_loss', 0):.3f}"]
        if "inner_accuracy" in metrics:
            parts.append(f"acc {metrics['inner_accuracy']:.3f}")
        parts.append(f"{rate:.2f} it/s")
        parts.append(f"ETA {_duration(left)}")
        line = "  ".join(parts)
        pad = max(0, len(self._last_line) - len(line))
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._last_line = line

    def on_validation(self, iteration: int, result: EvalResult) -> None:
        if result.accuracy is not None:
            ci = f" +- {100 * result.ci95:.2f}" if result.ci95 is not None else ""
            what = f"accuracy {100 * result.accuracy:.2f}%{ci}"
        else:
            what = f"loss {result.loss_before:.4f} -> {result.loss_after:.4f}"
        self._print(f"validation @ {iteration} ({result.split}, {result.tasks} tasks): {what}")

    def on_checkpoint(self, iteration: int, path: str) -> None:
        pass

    def on_end(self, result: TrainResult) -> None:
        state = "stopped" if result.stopped else "finished"
        self._print(
            f"{state} at {result.iterations_done}/{result.total_iterations}: {result.out_dir}"
        )

    def _print(self, text: str) -> None:
        if self._last_line:
            self.stream.write("\n")
            self._last_line = ""
        self.stream.write(text + "\n")
        self.stream.flush()
