"""The run state machine's transitions, each one a conditional UPDATE.

Every change of `Run.status` made by a worker or the supervisor goes through this module::

    queued ──claim_run──▶ running ──complete_run──▶ succeeded
      ▲                     │ ├──────fail_run────▶ failed
      │                     │ ├────cancel_run────▶ cancelled
      ├────release_run──────┘ │                     (worker shutting down: back to the queue)
      │                       ▼
      └──requeue_lost_runs── lost ◀──mark_stale_runs_lost  (no heartbeat for too long)

Two rules keep one run from ever having two runners:

- Claiming is a conditional UPDATE (`status = queued`) that proceeds only if exactly one row
  changed, like healthchecks' `sendalerts`: of two workers given the same run, one loses and
  exits quietly.
- Every later write by a worker is fenced by the attempt number it claimed
  (`status = running AND attempts = n`). A worker that was declared lost (a long pause, a
  network split) and whose run was requeued or claimed again changes nothing when it wakes up:
  its updates match no row, and it stops.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from . import metrics_series
from .models import Run, RunAttempt

logger = logging.getLogger(__name__)

# RunAttempt.outcome values (the run's own status for the final ones).
OUTCOME_RELEASED = "released"
OUTCOME_LOST = "lost"


def claim_run(run_id: int, *, worker: str, device: str, pid: int | None = None) -> Run | None:
    """Move a queued run to running for this worker; None if another worker won it, it was
    cancelled, or it is gone.

    Increments `attempts` (the fencing token for all later writes) and opens a RunAttempt that
    records the worker process (`pid`) training it.
    """
    now = timezone.now()
    with transaction.atomic():
        changed = Run.objects.filter(
            pk=run_id, status=Run.Status.QUEUED, cancel_requested=False
        ).update(
            status=Run.Status.RUNNING,
            attempts=F("attempts") + 1,
            worker=worker,
            device=device,
            started_at=Coalesce(F("started_at"), now),
            heartbeat_at=now,
            finished_at=None,
            status_reason="",
        )
        if changed != 1:
            return None
        run = Run.objects.select_related("experiment").get(pk=run_id)
        RunAttempt.objects.create(
            run=run,
            number=run.attempts,
            worker=worker,
            device=device,
            start_iteration=run.checkpoint_iteration,
            pid=pid,
        )
    logger.info("run %s claimed by %s (attempt %s)", run_id, worker, run.attempts)
    return run


def held_by(run: Run, attempt: int):
    """The queryset matching the run only while this attempt still holds it."""
    return Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING, attempts=attempt)


def record_device(run: Run, attempt: int, device: str) -> None:
    """What the claiming attempt trains on (known only once the task runs)."""
    held_by(run, attempt).update(device=device)
    RunAttempt.objects.filter(run=run, number=attempt).update(device=device)
    run.device = device


def _close_attempt(run_id: int, attempt: int, outcome: str, reason: str, now: datetime) -> None:
    RunAttempt.objects.filter(run_id=run_id, number=attempt, ended_at__isnull=True).update(
        ended_at=now, outcome=outcome, reason=reason
    )


def _finish(run: Run, attempt: int, status: str, reason: str, **fields) -> bool:
    """Leave `running` for a final status; False when this attempt no longer holds the run."""
    now = timezone.now()
    with transaction.atomic():
        changed = held_by(run, attempt).update(
            status=status, status_reason=reason, finished_at=now, heartbeat_at=now, **fields
        )
        if changed != 1:
            logger.warning(
                "run %s: attempt %s no longer holds it; %s not recorded", run.pk, attempt, status
            )
            return False
        _close_attempt(run.pk, attempt, status, reason, now)
        # A sweep proposes its next configurations once this outcome is committed.
        transaction.on_commit(partial(_sweep_hook, run.pk))
    run.refresh_from_db()
    keep_charts(run)
    return True


def keep_charts(run: Run) -> None:
    """Compute and keep the stopped run's whole chart series now, in the worker that wrote
    them, so that the first page load does not (bucketing 5 x 100,000 points reads every one
    of them: 1-3 s). Best effort: the run has ended either way, and a chart load computes what
    is missing."""
    try:
        with transaction.atomic():  # a failure here rolls back only this
            metrics_series.series(run)
    except DatabaseError:
        logger.warning("run %s: its chart series were not kept", run.pk, exc_info=True)


def _sweep_hook(run_id: int) -> None:
    from .sweeps.service import run_finished  # sweeps build on services, which import us

    run_finished(run_id)


def complete_run(run: Run, attempt: int, **fields) -> bool:
    """running -> succeeded; `fields` are written in the same UPDATE (test results...)."""
    return _finish(run, attempt, Run.Status.SUCCEEDED, "", **fields)


def fail_run(run: Run, attempt: int, reason: str) -> bool:
    """running -> failed, keeping the reason (the error and the tail of its traceback)."""
    return _finish(run, attempt, Run.Status.FAILED, reason)


def cancel_run(run: Run, attempt: int, reason: str = "cancelled while running") -> bool:
    """running -> cancelled, after the loop saw the cancel flag (its metrics are kept)."""
    return _finish(run, attempt, Run.Status.CANCELLED, reason)


def release_run(run: Run, attempt: int, reason: str = "worker shut down") -> bool:
    """running -> queued: the worker is stopping (SIGTERM, deploy) after a checkpoint, so
    another worker resumes the run. The message is sent again by the caller or the dispatcher
    (`dispatched_at` is cleared). A release is not a failure and never uses up an attempt of
    RUN_MAX_ATTEMPTS, which counts only losses.

    A run whose owner asked to cancel it meanwhile is cancelled instead (a queued run with the
    flag up would never be claimed again); False then, as when the attempt lost its claim.
    """
    now = timezone.now()
    with transaction.atomic():
        changed = (
            held_by(run, attempt)
            .filter(cancel_requested=False)
            .update(
                status=Run.Status.QUEUED,
                status_reason=reason,
                worker="",
                dispatched_at=None,
                dispatch_count=0,
                heartbeat_at=now,
            )
        )
        if changed == 1:
            _close_attempt(run.pk, attempt, OUTCOME_RELEASED, reason, now)
    if changed != 1:
        cancel_run(run, attempt, f"cancelled (requested as the worker shut down: {reason})")
        return False
    run.refresh_from_db()
    return True


def _stale(now: datetime) -> Q:
    cutoff = now - timedelta(seconds=settings.RUN_LOST_AFTER_SECONDS)
    return Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)


def mark_stale_runs_lost(now: datetime | None = None) -> list[int]:
    """Mark `lost` every running run whose heartbeat (or start, if it never beat) is older
    than RUN_LOST_AFTER_SECONDS; returns their ids.

    Each UPDATE repeats the staleness test, so a heartbeat written in between wins. A run
    whose row another session holds locked is left to a later call.
    """
    from .models import Worker

    now = now or timezone.now()
    limit = settings.RUN_LOST_AFTER_SECONDS
    lost = []
    candidates = Run.objects.filter(status=Run.Status.RUNNING).filter(_stale(now))
    for run in candidates.only(
        "pk",
        "attempts",
        "worker",
        "heartbeat_at",
        "started_at",
        "iteration",
        "checkpoint_iteration",
    ):
        last = run.heartbeat_at or run.started_at
        age = (now - last).total_seconds()
        # The heartbeat means progress: a worker that went on reporting itself alive well
        # after its run stopped advancing is stuck (a hung kernel, a stopped task worker), not
        # gone. A dead worker's last report is within a heartbeat or so of its run's.
        margin = min(2 * settings.RUN_HEARTBEAT_SECONDS, limit / 2)
        worker_alive = Worker.objects.filter(
            hostname=run.worker, last_seen__gt=last + timedelta(seconds=margin)
        ).exists()
        what = "stalled: no progress" if worker_alive else "no heartbeat"
        reason = (
            f"{what} for {age:.0f} s (limit {limit} s) from worker {run.worker or '?'} at "
            f"iteration {run.iteration}; its last checkpoint is at iteration "
            f"{run.checkpoint_iteration}"
        )
        with transaction.atomic():
            still_stale = Run.objects.filter(
                pk=run.pk, status=Run.Status.RUNNING, attempts=run.attempts
            ).filter(_stale(now))
            # A worker frozen inside a fenced write (SIGSTOP, a paused VM) keeps the row locked
            # until the server ends its transaction (DB_IDLE_IN_TRANSACTION_SECONDS): waiting
            # for it here would stop the supervision of every run. Skipped, it is judged on a
            # later tick, like a live worker in the middle of a write.
            if not still_stale.select_for_update(skip_locked=True).values_list("pk").exists():
                continue
            changed = still_stale.update(status=Run.Status.LOST, status_reason=reason)
            if changed == 1:
                _close_attempt(run.pk, run.attempts, OUTCOME_LOST, reason, now)
                lost.append(run.pk)
                logger.warning("run %s lost: %s", run.pk, reason)
    return lost


def lost_attempts(run: Run) -> int:
    """How many of the run's attempts ended lost (releases on shutdown are not counted)."""
    return RunAttempt.objects.filter(run=run, outcome=OUTCOME_LOST).count()


def requeue_lost_runs() -> dict[str, list[int]]:
    """Resume lost runs: back to `queued` (dispatched again, resuming from their checkpoint)
    while fewer than RUN_MAX_ATTEMPTS attempts were lost, else `failed` with the reason; a
    lost run whose owner asked to cancel becomes `cancelled`.

    Returns the ids per outcome: {"queued": [...], "failed": [...], "cancelled": [...]}.
    """
    limit = settings.RUN_MAX_ATTEMPTS
    done: dict[str, list[int]] = {"queued": [], "failed": [], "cancelled": []}
    now = timezone.now()
    for run in Run.objects.filter(status=Run.Status.LOST):
        lost_reason = run.status_reason
        count = lost_attempts(run)
        lost_only = Run.objects.filter(pk=run.pk, status=Run.Status.LOST)
        if run.cancel_requested:
            changed = lost_only.update(
                status=Run.Status.CANCELLED,
                finished_at=now,
                status_reason=f"cancelled after it was lost ({lost_reason})",
            )
            key = "cancelled"
        elif count >= limit:
            changed = lost_only.update(
                status=Run.Status.FAILED,
                finished_at=now,
                status_reason=(
                    f"failed: lost {count} times, the most RUN_MAX_ATTEMPTS={limit} allows, so "
                    f"it is not resumed again (its checkpoint at iteration "
                    f"{run.checkpoint_iteration} is kept). Last loss: {lost_reason}"
                ),
            )
            key = "failed"
        else:
            changed = lost_only.update(
                status=Run.Status.QUEUED,
                worker="",
                dispatched_at=None,
                dispatch_count=0,
                status_reason=(
                    f"requeued after loss {count} of {limit}; resumes from its checkpoint at "
                    f"iteration {run.checkpoint_iteration}. Lost: {lost_reason}"
                ),
            )
            key = "queued"
        if changed == 1:
            done[key].append(run.pk)
            logger.info("lost run %s -> %s", run.pk, key)
    return done


def supervise(now: datetime | None = None) -> dict[str, list[int]]:
    """One round of supervision: mark stale runs lost, then requeue or fail them."""
    lost = mark_stale_runs_lost(now)
    result = requeue_lost_runs()
    result["lost"] = lost
    return result


def process_done(run: Run, attempt: int) -> None:
    """The worker process returned from this attempt (whatever its outcome): it is no longer
    stuck in it, so its worker must not recycle it (see `workers.recycle_stuck_processes`)."""
    RunAttempt.objects.filter(run_id=run.pk, number=attempt, process_done_at__isnull=True).update(
        process_done_at=timezone.now()
    )


def drop_checkpoint(run: Run) -> None:
    """A succeeded run resumes nowhere: forget its checkpoint and delete every stored file but
    the initialization and config users download (strays of lost attempts included)."""
    from . import run_files

    row = Run.objects.filter(pk=run.pk, status=Run.Status.SUCCEEDED)
    if not row.update(checkpoint_file=""):
        return
    run.refresh_from_db()
    keep = [name for name in (run.initialization.name, run.config_file.name) if name]
    transaction.on_commit(lambda: run_files.delete_run_files(run.pk, keep=keep))
