"""DbReporter: how a training run in a worker reports to the database.

The training loop calls the reporter after every meta-iteration and every evaluation task,
hundreds of times a second for small models, so nothing here touches the database on every
call:

- metric points are buffered and written in batches (one INSERT ... ON CONFLICT UPDATE per
  batch, keyed by (run, name, step), so a resumed attempt overwrites the steps it repeats);
- progress (iteration, total, seconds per iteration, heartbeat_at) is written at most every
  RUN_HEARTBEAT_SECONDS, together with the buffered points;
- the cancel flag is read at most every `cancel_poll_seconds`; the worker's shutdown flag is a
  byte of shared memory, read on every poll.

Every progress write is fenced by the attempt number (see `lifecycle`): when it matches no row,
the run was declared lost and given to someone else, and `should_stop()` says stop.

A database outage does not kill a run: a failed write is logged, the points stay in the
buffer, and the next write tries again (after reconnecting). If the outage outlasts
RUN_LOST_AFTER_SECONDS the supervisor declares the run lost and the fence stops this attempt.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone

from metatrain import Reporter

from . import workers
from .lifecycle import held_by
from .models import Evaluation, MetricPoint, Run, RunAttempt

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Reasons `should_stop()` returned True, in `DbReporter.stop_reason`.
STOP_CANCEL = "cancel"
STOP_SHUTDOWN = "shutdown"
STOP_LOST = "lost"
STOP_DEADLINE = "deadline"

# Per-iteration metrics that are not series: `seconds` feeds seconds_per_iteration instead.
_NOT_SERIES = frozenset({"seconds"})
# Weight of the newest iteration in the seconds-per-iteration moving average.
_EMA = 0.1


class DbReporter(Reporter):
    """Writes one attempt of one run to the database; see the module docstring.

    Args:
        run: the claimed run.
        attempt: the attempt number returned by the claim (`run.attempts` right after it).
        heartbeat_seconds: least time between progress writes (RUN_HEARTBEAT_SECONDS).
        cancel_poll_seconds: least time between reads of the cancel flag.
        batch_size: buffered points that force a write before the heartbeat is due.
        time_limit_seconds: stop (reason "deadline") this long after the reporter was made.
        clock: monotonic seconds; tests pass a fake one instead of sleeping.
    """

    def __init__(
        self,
        run: Run,
        attempt: int,
        *,
        heartbeat_seconds: float | None = None,
        cancel_poll_seconds: float = 2.0,
        batch_size: int = 2000,
        time_limit_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run = run
        self.attempt = attempt
        self.heartbeat_seconds = (
            settings.RUN_HEARTBEAT_SECONDS if heartbeat_seconds is None else heartbeat_seconds
        )
        self.cancel_poll_seconds = cancel_poll_seconds
        self.batch_size = batch_size
        self.clock = clock
        self.deadline = None if time_limit_seconds is None else clock() + time_limit_seconds

        self.stop_reason: str | None = None
        self.iteration = run.iteration
        self.total_iterations = run.total_iterations
        self.seconds_per_iteration: float | None = run.seconds_per_iteration
        self._points: dict[tuple[str, int], float] = {}
        self._last_write = -math.inf
        self._last_poll = -math.inf
        self._skipped_nonfinite = False

    # -- the Reporter interface ---------------------------------------------------------------
    def on_start(self, info: dict[str, Any]) -> None:
        """Drop what a previous attempt recorded after the checkpoint this one resumes from
        (those steps are trained again), and record where this attempt starts."""
        start = int(info.get("start_iteration", 0))
        self.total_iterations = int(info.get("total_iterations", self.total_iterations))
        self.iteration = start
        self.write_progress(checkpoint_iteration=start)
        if self.stop_reason == STOP_LOST:
            return  # someone else's run now: touch nothing
        self._db(lambda: self._forget_after(start))
        self._db(
            lambda: RunAttempt.objects.filter(run=self.run, number=self.attempt).update(
                start_iteration=start
            )
        )

    def on_iteration(self, iteration: int, metrics: dict[str, float]) -> None:
        self.iteration = iteration
        seconds = metrics.get("seconds")
        if seconds is not None and math.isfinite(seconds):
            prev = self.seconds_per_iteration
            self.seconds_per_iteration = (
                seconds if prev is None else (1 - _EMA) * prev + _EMA * seconds
            )
        for name, value in metrics.items():
            if name not in _NOT_SERIES:
                self.add_point(name, iteration, value)
        if len(self._points) >= self.batch_size:
            self.flush()
        self.heartbeat()

    def on_validation(self, iteration: int, result: Any) -> None:
        """An Evaluation row, and its numbers as points of the validation_* series."""
        extra = {
            k: v
            for k, v in result.to_dict().items()
            if k not in {"accuracy", "ci95", "tasks", "ways", "shots", "queries", "transductive"}
            and k not in {"split", "ci_method"}
        }
        split = result.split or "validation"
        self._db(
            lambda: Evaluation.create_from_result(
                self.run, result, iteration=iteration, split=split, extra=_json_safe(extra)
            )
        )
        for name in ("accuracy", "ci95", "loss_before", "loss_after"):
            value = getattr(result, name, None)
            if value is not None:
                self.add_point(f"validation_{name}", iteration, value)
        self.flush()

    def before_checkpoint(self, iteration: int) -> bool:
        """Store every point up to the checkpoint before its file exists: a worker killed
        between the file and the next write is resumed from that file, and a gap before the
        resumed attempt's first step would never be filled. While the database refuses the
        points (an outage) the checkpoint is skipped and the previous one stays."""
        return self.flush()

    def on_checkpoint(self, iteration: int, path: str) -> None:
        """Record the checkpoint the file now holds (its points were stored just before)."""
        self.iteration = max(self.iteration, iteration)
        if self.flush():
            self.write_progress(checkpoint_iteration=iteration)

    def heartbeat(self) -> None:
        """Cheap when called often: a clock read, and a write when one is due."""
        if self.clock() - self._last_write >= self.heartbeat_seconds:
            self.write_progress()

    def should_stop(self) -> bool:
        if self.stop_reason is not None:
            return True
        if workers.shutting_down():
            return self._stop(STOP_SHUTDOWN)
        now = self.clock()
        if self.deadline is not None and now >= self.deadline:
            return self._stop(STOP_DEADLINE)
        if now - self._last_poll >= self.cancel_poll_seconds:
            self._last_poll = now
            row = self._db(
                lambda: (
                    Run.objects.filter(pk=self.run.pk)
                    .values_list("status", "attempts", "cancel_requested")
                    .first()
                ),
                default=(Run.Status.RUNNING, self.attempt, False),  # unknown: carry on
            )
            if row is None or row[0] != Run.Status.RUNNING or row[1] != self.attempt:
                return self._stop(STOP_LOST)
            if row[2]:
                return self._stop(STOP_CANCEL)
        return False

    def on_end(self, result: Any) -> None:
        self.iteration = int(getattr(result, "iterations_done", self.iteration))
        self.flush()
        self.write_progress()

    # -- writing ------------------------------------------------------------------------------
    def add_point(self, name: str, step: int, value: float) -> None:
        """Buffer one point; the latest value of a (name, step) wins. Non-finite values are
        skipped (SQLite cannot store NaN, and JSON cannot carry it)."""
        try:
            value = float(value)
        except (TypeError, ValueError):
            return
        if not math.isfinite(value):
            if not self._skipped_nonfinite:
                logger.warning("run %s: skipping non-finite %s at step %s", self.run.pk, name, step)
                self._skipped_nonfinite = True
            return
        self._points[(name, int(step))] = value

    def flush(self) -> bool:
        """Write the buffered points; True when the buffer is empty afterwards."""
        if not self._points:
            return True
        points = [
            MetricPoint(run_id=self.run.pk, name=name, step=step, value=value)
            for (name, step), value in self._points.items()
        ]
        written = self._db(
            lambda: MetricPoint.objects.bulk_create(
                points,
                batch_size=500,
                update_conflicts=True,
                unique_fields=["run", "name", "step"],
                update_fields=["value"],
            ),
            default=None,
        )
        if written is None:
            return False
        self._points.clear()
        return True

    def write_progress(self, **fields: Any) -> None:
        """Flush points, then write iteration, total, speed and heartbeat (fenced)."""
        self._last_write = self.clock()
        self.flush()
        values: dict[str, Any] = {
            "iteration": self.iteration,
            "heartbeat_at": timezone.now(),
            **fields,
        }
        if self.total_iterations:
            values["total_iterations"] = self.total_iterations
        if self.seconds_per_iteration is not None:
            values["seconds_per_iteration"] = self.seconds_per_iteration
        changed = self._db(lambda: held_by(self.run, self.attempt).update(**values), default=None)
        if changed == 0:
            self._stop(STOP_LOST)

    # -- silent phases ------------------------------------------------------------------------
    @contextlib.contextmanager
    def keep_alive(self, max_silence_seconds: float) -> Iterator[None]:
        """Keep the heartbeat fresh while the library works without calling the reporter
        (loading a dataset, building the model, before the loop's first call), for at most
        `max_silence_seconds` of silence: a loop that really hangs still goes stale and is
        declared lost, only later. A thread writes the heartbeat whenever the reporter has not
        written for `heartbeat_seconds`; it dies with the process, so a crash is seen at once.
        """
        stop = threading.Event()

        def beat() -> None:
            try:
                while not stop.wait(self.heartbeat_seconds):
                    silent = self.clock() - self._last_write
                    if silent > max_silence_seconds:
                        logger.warning("run %s: silent for %.0f s", self.run.pk, silent)
                        return
                    if silent >= self.heartbeat_seconds:
                        changed = self._db(
                            lambda: held_by(self.run, self.attempt).update(
                                heartbeat_at=timezone.now()
                            )
                        )
                        if changed == 0:
                            self._stop(STOP_LOST)
                            return
            finally:
                connection.close()

        self._last_write = max(self._last_write, self.clock())
        thread = threading.Thread(target=beat, name=f"run-{self.run.pk}-keep-alive", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    # -- helpers ------------------------------------------------------------------------------
    def _stop(self, reason: str) -> bool:
        if self.stop_reason is None:
            self.stop_reason = reason
            logger.info("run %s: stopping (%s)", self.run.pk, reason)
        return True

    def _forget_after(self, step: int) -> None:
        MetricPoint.objects.filter(run_id=self.run.pk, step__gt=step).delete()
        Evaluation.objects.filter(run_id=self.run.pk, iteration__gt=step).exclude(
            split="test"
        ).delete()

    def _db(self, action: Callable[[], T], default: Any = None) -> T | Any:
        """Run a query; on a connection error reconnect and retry once, then give up with
        `default` (logged) rather than crash a run that may have hours behind it."""
        for tries in (1, 2):
            try:
                return action()
            except (OperationalError, InterfaceError) as exc:
                logger.warning(
                    "run %s: database write failed (%s), try %s", self.run.pk, exc, tries
                )
                connection.close()
        return default


def _json_safe(data: dict[str, Any]) -> dict[str, Any]:
    """Drop values JSON cannot hold (NaN, infinities, objects) from an evaluation's extras."""
    safe = {}
    for key, value in data.items():
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if isinstance(value, str | int | float | bool) or value is None:
            safe[key] = value
    return safe
