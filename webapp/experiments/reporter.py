"""DbReporter: how a training run in a worker reports to the database and the storage.

The training loop calls the reporter after every meta-iteration and every evaluation task,
hundreds of times a second for small models, so nothing here touches the database on every
call:

- metric points and evaluations are buffered and written in batches (upserts keyed by (run,
  name, step) and (run, kind, split, iteration), so a resumed attempt overwrites the steps it
  repeats instead of adding rows);
- progress (iteration, total, seconds per iteration, heartbeat_at) is written at most every
  RUN_HEARTBEAT_SECONDS, together with the buffers;
- the cancel flag is read at most every `cancel_poll_seconds`; the worker's shutdown flag is a
  byte of shared memory, read on every poll.

Fencing: every write is fenced by the attempt number (see `lifecycle`). Buffers are written in
a transaction that first locks the run's row while this attempt holds it, so an attempt that
was declared lost (a worker paused for minutes that wakes up) writes nothing at all, not even
points; progress writes are conditional UPDATEs. When a fence matches no row, `should_stop()`
says stop and `before_checkpoint()` refuses, so no checkpoint file is written either.

Checkpoints go to the storage every host shares, under a name that carries the attempt and the
iteration (`run_files.checkpoint_name`), and the run row is pointed at it by a fenced UPDATE:
a woken attempt's upload replaces nothing and is never pointed to.

The heartbeat means progress: it is stamped as iterations and evaluation tasks advance. Only
before the library first reports progress (loading data, building the model) may `keep_alive`
stamp it from a thread, for a bounded time.

A database outage does not kill a run: writes stay buffered and are retried with exponential
backoff (one warning when the outage starts, one when it ends). If the outage outlasts
RUN_LOST_AFTER_SECONDS the supervisor declares the run lost and the fence stops this attempt.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from metatrain import Reporter

from . import run_files, series_summaries, workers
from .lifecycle import held_by
from .models import Evaluation, MetricPoint, Run, RunAttempt

logger = logging.getLogger(__name__)

T = TypeVar("T")

# PostgreSQL ended the session for a transaction left idle too long (the worker was frozen
# mid-write: DB_IDLE_IN_TRANSACTION_SECONDS) or open too long; reported as InternalError, but
# the session is gone all the same and a new connection is what it takes.
SESSION_ENDED_SQLSTATES = frozenset({"25P03", "25P04"})


def _connection_lost(exc: DatabaseError) -> bool:
    """Did the query fail because the session is gone (the server unreachable, restarted, or
    ending a transaction this worker left idle while it was frozen)?"""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return getattr(exc.__cause__, "sqlstate", None) in SESSION_ENDED_SQLSTATES


# Reasons `should_stop()` returned True, in `DbReporter.stop_reason`.
STOP_CANCEL = "cancel"
STOP_SHUTDOWN = "shutdown"
STOP_LOST = "lost"
STOP_DEADLINE = "deadline"

# Per-iteration metrics that are not series: `seconds` feeds seconds_per_iteration instead.
_NOT_SERIES = frozenset({"seconds"})
# Weight of the newest iteration in the seconds-per-iteration moving average.
_EMA = 0.1
# Fields of an evaluation result that are columns, not extras.
_EVALUATION_COLUMNS = frozenset(
    {"accuracy", "ci95", "tasks", "ways", "shots", "queries", "transductive", "split", "ci_method"}
)
_EVALUATION_FIELDS = [
    "accuracy",
    "ci95",
    "tasks",
    "ways",
    "shots",
    "queries",
    "transductive",
    "ci_method",
    "extra",
]


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
        retry_seconds: (first, longest) wait between tries while the database is unreachable.
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
        retry_seconds: tuple[float, float] = (0.5, 30.0),
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
        self.retry_seconds = retry_seconds

        self.stop_reason: str | None = None
        self.iteration = run.iteration
        self.total_iterations = run.total_iterations
        self.seconds_per_iteration: float | None = run.seconds_per_iteration
        # The stored checkpoint the run row points to (what this attempt started from, then
        # what it recorded).
        self.checkpoint_name: str = run.checkpoint_file.name or ""
        self._points: dict[tuple[str, int], float] = {}
        self._evaluations: dict[tuple[str, str, int], dict[str, Any]] = {}
        self._last_write = -math.inf
        self._last_poll = -math.inf
        self._skipped_nonfinite = False
        # Progress reports seen (iterations, evaluation tasks): what the heartbeat stands for.
        self._progress = 0
        # Database outage: when to try again, the current wait, when it began, what waited.
        self._retry_at = -math.inf
        self._retry_wait = 0.0
        self._outage_since: float | None = None
        self._deferred = 0
        self._db_lock = threading.Lock()
        # The final evaluation (`begin_evaluation`): when it began, its tasks, tasks started.
        self._eval_started: float | None = None
        self._eval_total = 0
        self._eval_polls = 0

    # -- the Reporter interface ---------------------------------------------------------------
    def on_start(self, info: dict[str, Any]) -> None:
        """Drop what a previous attempt recorded after the checkpoint this one resumes from
        (those steps are trained again), and record where this attempt starts."""
        start = int(info.get("start_iteration", 0))
        self.total_iterations = int(info.get("total_iterations", self.total_iterations))
        self.iteration = start
        self._db(lambda: self._fenced(lambda: self._forget_after(start)))
        self.write_progress(
            checkpoint_iteration=start,
            phase=Run.Phase.TRAINING,
            eval_tasks_done=0,
            eval_tasks_total=0,
            eval_tasks_per_second=None,
        )

    # -- the final evaluation ----------------------------------------------------------------
    def begin_evaluation(self, total_tasks: int) -> None:
        """The final evaluation starts: the run's phase becomes "evaluating" and from now on
        its progress counts evaluation tasks (written with the heartbeat, fenced)."""
        self._eval_started = self.clock()
        self._eval_total = int(total_tasks)
        self._eval_polls = 0
        self.write_progress()

    @property
    def eval_tasks_done(self) -> int:
        # The loop polls `should_stop` before each task: the task being run is not done yet.
        return max(0, min(self._eval_total, self._eval_polls - 1))

    def _evaluation_progress(self) -> dict[str, Any]:
        if self._eval_started is None:
            return {}
        elapsed = self.clock() - self._eval_started
        done = self.eval_tasks_done
        return {
            "phase": Run.Phase.EVALUATING,
            "eval_tasks_done": done,
            "eval_tasks_total": self._eval_total,
            "eval_tasks_per_second": done / elapsed if done and elapsed > 0 else None,
        }

    def on_iteration(self, iteration: int, metrics: dict[str, float]) -> None:
        self._progress += 1
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
        """An Evaluation row, and its numbers as points of the validation_* series (buffered
        like points, written now)."""
        self._progress += 1
        extra = {k: v for k, v in result.to_dict().items() if k not in _EVALUATION_COLUMNS}
        self.add_evaluation(
            result,
            iteration=iteration,
            split=result.split or "validation",
            kind=Evaluation.Kind.VALIDATION,
            extra=_json_safe(extra),
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
        points (an outage), or once this attempt has lost the run, the checkpoint is skipped."""
        if self.stop_reason == STOP_LOST:
            return False
        return self.flush()

    def on_checkpoint(self, iteration: int, path: str) -> None:
        """Upload the checkpoint file under this attempt's name, then point the run at it
        (fenced), then delete the checkpoints it replaces."""
        self.iteration = max(self.iteration, iteration)
        if not self.flush():
            return
        name = run_files.checkpoint_name(self.run.pk, self.attempt, iteration)
        try:
            name = run_files.upload(Path(path), name)
        except Exception:  # storage unreachable: this checkpoint is local only, the next tries
            logger.warning(
                "run %s: checkpoint at %s not uploaded; keeping the previous one",
                self.run.pk,
                iteration,
                exc_info=True,
            )
            return
        changed = self._db(
            lambda: held_by(self.run, self.attempt).update(
                checkpoint_iteration=iteration,
                checkpoint_file=name,
                iteration=self.iteration,
                heartbeat_at=timezone.now(),
            ),
            default=None,
        )
        if changed != 1:
            run_files.delete(name)  # never pointed to: nobody will read it
            if changed == 0:
                self._stop(STOP_LOST)
            return
        self._last_write = self.clock()
        self.checkpoint_name = name
        for stale in run_files.stale_checkpoints(self.run.pk, self.attempt, keep=name):
            run_files.delete(stale)

    def heartbeat(self) -> None:
        """Progress was made (an evaluation task, a training task). Cheap when called often: a
        clock read, and a write when one is due."""
        self._progress += 1
        if self.clock() - self._last_write >= self.heartbeat_seconds:
            self.write_progress()

    def should_stop(self) -> bool:
        if self._eval_started is not None:
            self._eval_polls += 1
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

    def add_evaluation(
        self, result: Any, *, iteration: int, split: str, kind: str, extra: dict[str, Any]
    ) -> None:
        """Buffer one evaluation; the latest result for a (kind, split, iteration) wins."""
        self._evaluations[(kind, split, int(iteration))] = Evaluation.fields_from_result(
            result, extra=extra
        )

    def flush(self) -> bool:
        """Write the buffered points and evaluations, only while this attempt holds the run;
        True when the buffers are empty afterwards."""
        if self.stop_reason == STOP_LOST:
            self._points.clear()  # they belong to an attempt that no longer exists
            self._evaluations.clear()
            return False
        if not self._points and not self._evaluations:
            return True
        held = self._db(lambda: self._fenced(self._write_buffers), default=None)
        if held is None:
            return False  # unreachable: kept for the next try
        if not held:
            self._stop(STOP_LOST)
            return self.flush()
        self._points.clear()
        self._evaluations.clear()
        return True

    def write_progress(self, **fields: Any) -> None:
        """Flush the buffers, then write iteration, total, speed and heartbeat (fenced)."""
        self._last_write = self.clock()
        self.flush()
        if self.stop_reason == STOP_LOST:
            return
        values: dict[str, Any] = {
            "iteration": self.iteration,
            "heartbeat_at": timezone.now(),
            **self._evaluation_progress(),
            **fields,
        }
        if self.total_iterations:
            values["total_iterations"] = self.total_iterations
        if self.seconds_per_iteration is not None:
            values["seconds_per_iteration"] = self.seconds_per_iteration
        changed = self._db(lambda: held_by(self.run, self.attempt).update(**values), default=None)
        if changed == 0:
            self._stop(STOP_LOST)

    def _write_buffers(self) -> None:
        points = [
            MetricPoint(run_id=self.run.pk, name=name, step=step, value=value)
            for (name, step), value in self._points.items()
        ]
        MetricPoint.objects.bulk_create(
            points,
            batch_size=500,
            update_conflicts=True,
            unique_fields=["run", "name", "step"],
            update_fields=["value"],
        )
        evaluations = [
            Evaluation(run_id=self.run.pk, kind=kind, split=split, iteration=iteration, **fields)
            for (kind, split, iteration), fields in self._evaluations.items()
        ]
        Evaluation.objects.bulk_create(
            evaluations,
            update_conflicts=True,
            unique_fields=["run", "kind", "split", "iteration"],
            update_fields=_EVALUATION_FIELDS,
        )

    def _fenced(self, write: Callable[[], Any]) -> bool:
        """Run `write` in a transaction that first locks the run's row, only while this attempt
        holds the run; False (nothing written) otherwise. The supervisor and a new claim wait
        for the lock, so the write lands entirely before they change the run, or not at all."""
        with transaction.atomic():
            holds = (
                held_by(self.run, self.attempt)
                .select_for_update()
                .values_list("pk", flat=True)
                .first()
            )
            if holds is None:
                return False
            write()
        return True

    # -- silent phases ------------------------------------------------------------------------
    @contextlib.contextmanager
    def keep_alive(self, max_silence_seconds: float) -> Iterator[None]:
        """Keep the heartbeat fresh while the library works before it first reports progress
        (loading a dataset, building the model, starting task workers), for at most
        `max_silence_seconds`. From the first progress report on, only progress stamps the
        heartbeat: a loop that stops advancing (a hung kernel, a stopped task worker) goes
        stale and is declared lost, however alive its process looks.
        """
        stop = threading.Event()
        progress_at_entry = self._progress
        entered = self.clock()

        def beat() -> None:
            try:
                while not stop.wait(self.heartbeat_seconds):
                    if self._progress != progress_at_entry:
                        return  # the loop reports progress itself from now on
                    if self.clock() - entered > max_silence_seconds:
                        logger.warning(
                            "run %s: silent for %.0f s before reporting progress; the heartbeat "
                            "is left to go stale",
                            self.run.pk,
                            self.clock() - entered,
                        )
                        return
                    if self.clock() - self._last_write >= self.heartbeat_seconds:
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
        series_summaries.forget(self.run.pk)  # they summarise the steps just deleted
        Evaluation.objects.filter(
            run_id=self.run.pk, kind=Evaluation.Kind.VALIDATION, iteration__gt=step
        ).delete()
        RunAttempt.objects.filter(run=self.run, number=self.attempt).update(start_iteration=step)

    def _db(self, action: Callable[[], T], default: Any = None) -> T | Any:
        """Run a query. On a connection error, reconnect and retry once (a connection the
        server dropped), then back off: until the next try is due, calls return `default` at
        once without touching the network, and each failed try doubles the wait."""
        now = self.clock()
        if now < self._retry_at:
            self._deferred += 1
            return default
        for tries in (1, 2):
            try:
                result = action()
            except DatabaseError as exc:
                if not _connection_lost(exc):
                    raise
                connection.close()
                if tries == 1:
                    continue
                self._back_off(exc)
                return default
            if self._outage_since is not None:
                logger.warning(
                    "run %s: database reachable again after %.0f s (%s writes waited)",
                    self.run.pk,
                    self.clock() - self._outage_since,
                    self._deferred,
                )
                self._outage_since = None
                self._retry_wait = 0.0
                self._deferred = 0
            return result
        return default  # not reached

    def _back_off(self, exc: Exception) -> None:
        with self._db_lock:
            first, longest = self.retry_seconds
            self._retry_wait = first if not self._retry_wait else min(longest, self._retry_wait * 2)
            self._retry_at = self.clock() + self._retry_wait
            self._deferred += 1
            if self._outage_since is None:
                self._outage_since = self.clock()
                logger.warning(
                    "run %s: database unreachable (%s); writes are buffered and retried with "
                    "backoff",
                    self.run.pk,
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                )


def _json_safe(data: dict[str, Any]) -> dict[str, Any]:
    """Drop values JSON cannot hold (NaN, infinities, objects) from an evaluation's extras."""
    safe = {}
    for key, value in data.items():
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if isinstance(value, str | int | float | bool) or value is None:
            safe[key] = value
    return safe
