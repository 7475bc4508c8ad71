"""Celery tasks: thin wrappers that take a primary key and hand the work to library code.

- `train_run(run_id)`: claim the run (or return quietly), train it with metatrain, evaluate
  it on the test split, store its files, and record the outcome.
- `dispatch_pending`, `supervise_runs`: the periodic tasks (celery beat, every 15 s, on the
  `default` queue) that resend undelivered runs and resume lost ones.

Delivery (settings.py): early acknowledgement, prefetch disabled (a busy worker holds no second
message), so a message is never redelivered behind a worker's back; a worker that dies mid-run
is caught by the heartbeat rule (`lifecycle.mark_stale_runs_lost`) and its run resumed from the
last checkpoint. A duplicate message is harmless: only one worker can win the claim.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import torch
from celery import shared_task
from django.conf import settings
from django.db import transaction

from . import lifecycle, workers
from .dispatch import dispatch_pending_runs, send_run
from .models import Evaluation, Run

logger = logging.getLogger(__name__)

# Celery's hard kill, a backstop behind the reporter's own deadline (which checkpoints and
# fails the run with a reason): only a process hung outside the training loop reaches it.
HARD_LIMIT_GRACE_SECONDS = 15 * 60
# How much of a traceback a failed run keeps in status_reason.
TRACEBACK_CHARS = 4000
# Longest time the library may work without calling the reporter (loading a large dataset
# before training or before the final evaluation) while the run still counts as alive.
SILENT_PHASE_SECONDS = 30 * 60


def run_dir(run: Run) -> Path:
    """A run's working folder (checkpoint, metrics.jsonl): the same for every attempt, so a
    resumed attempt finds the last checkpoint."""
    return Path(settings.RUNS_ROOT) / str(run.pk)


def failure_reason(exc: BaseException) -> str:
    """The error on the first line, then the tail of the traceback (most recent frames)."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if len(text) > TRACEBACK_CHARS:
        text = "...\n" + text[-TRACEBACK_CHARS:]
    return f"{type(exc).__name__}: {exc}\n\n{text}"


@shared_task(
    name="webapp.experiments.tasks.train_run",
    bind=True,
    ignore_result=True,
    acks_late=False,
    time_limit=settings.RUN_TIME_LIMIT_SECONDS + HARD_LIMIT_GRACE_SECONDS,
)
def train_run(self, run_id: int) -> str:
    """Train one run to a final state; returns what happened (for logs and tests)."""
    hostname = self.request.hostname or ""
    run = lifecycle.claim_run(run_id, worker=hostname or "in-process", device="")
    if run is None:
        logger.info("run %s not claimed (gone, already claimed, or cancelled)", run_id)
        return "not-claimed"
    attempt = run.attempts
    try:
        return _train_claimed(run, attempt, hostname)
    finally:
        workers.set_current_run(hostname, None)
        _free_accelerator_memory()


def _train_claimed(run: Run, attempt: int, hostname: str) -> str:
    """Everything after a successful claim; the run is this attempt's until it says otherwise."""
    import metatrain

    from .artifacts import store_artifacts
    from .reporter import STOP_LOST, DbReporter

    reporter = DbReporter(run, attempt, time_limit_seconds=settings.RUN_TIME_LIMIT_SECONDS)
    try:
        device = workers.training_device()
        if device == "cpu" and settings.WORKER_TORCH_THREADS:
            # Small batches: two intra-op threads collapse when another process shares the
            # cores (measured 10x slower here); scale with more worker processes instead.
            torch.set_num_threads(settings.WORKER_TORCH_THREADS)
        config = metatrain.Config.from_dict(run.config)
        compute = metatrain.Compute(device=device, workers=settings.WORKER_TASK_WORKERS)
        task_workers = compute.task_workers(config)
        # after the thread count it reports
        device_name = workers.describe_device(task_workers=task_workers)
        lifecycle.record_device(run, attempt, device_name)
        workers.set_current_run(hostname, run.pk, device=device_name)

        out_dir = run_dir(run)
        with reporter.keep_alive(SILENT_PHASE_SECONDS):
            result = metatrain.train(config, str(out_dir), reporter=reporter, compute=compute)
        if result.stopped:
            return _stopped(run, attempt, reporter.stop_reason, result.iterations_done)
        with reporter.keep_alive(SILENT_PHASE_SECONDS):
            evaluation = metatrain.evaluate(
                str(out_dir),
                config,
                split="test",
                tasks=config.final_eval_tasks,
                reporter=reporter,
                compute=compute,
            )
        if evaluation.stopped or reporter.stop_reason:
            return _stopped(run, attempt, reporter.stop_reason, result.iterations_done)
        store_artifacts(run, out_dir)
        with transaction.atomic():
            Evaluation.create_from_result(
                run,
                evaluation,
                iteration=result.iterations_done,
                split=evaluation.split,
                extra={"final": True, **_final_extra(evaluation)},
            )
            done = lifecycle.complete_run(
                run,
                attempt,
                iteration=result.iterations_done,
                test_accuracy=evaluation.accuracy,
                test_ci95=evaluation.ci95,
                test_tasks=evaluation.tasks,
            )
            if not done:
                transaction.set_rollback(True)
                return STOP_LOST
        logger.info("run %s succeeded: test %s", run.pk, evaluation)
        return Run.Status.SUCCEEDED
    except Exception as exc:
        logger.exception("run %s failed", run.pk)
        reporter.flush()
        lifecycle.fail_run(run, attempt, failure_reason(exc))
        return Run.Status.FAILED


def _stopped(run: Run, attempt: int, reason: str | None, iteration: int) -> str:
    """The loop stopped early (checkpoint written): record why."""
    from .reporter import STOP_CANCEL, STOP_DEADLINE, STOP_LOST

    if reason == STOP_LOST:
        logger.warning("run %s: attempt %s lost its claim; leaving the run alone", run.pk, attempt)
        return STOP_LOST
    if reason == STOP_CANCEL:
        lifecycle.cancel_run(run, attempt, f"cancelled at iteration {iteration}; checkpoint kept")
        return Run.Status.CANCELLED
    if reason == STOP_DEADLINE:
        lifecycle.fail_run(
            run,
            attempt,
            f"time limit of {settings.RUN_TIME_LIMIT_SECONDS} s (RUN_TIME_LIMIT_SECONDS) reached "
            f"at iteration {iteration}; checkpoint kept",
        )
        return Run.Status.FAILED
    # The worker is shutting down (or the loop stopped for a reason of its own): hand the run
    # back so the next free worker resumes it from the checkpoint.
    if lifecycle.release_run(run, attempt, f"worker shut down at iteration {iteration}; resumes"):
        send_run(run.pk, run.queue)  # best effort; the dispatcher resends it otherwise
        return Run.Status.QUEUED
    run.refresh_from_db()
    return run.status  # cancelled meanwhile, or no longer this attempt's


def _final_extra(evaluation) -> dict:
    keep = ("loss_before", "loss_after", "inner_optimizer_state", "seconds")
    return {k: getattr(evaluation, k) for k in keep if getattr(evaluation, k, None) is not None}


def _free_accelerator_memory() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@shared_task(name="webapp.experiments.tasks.dispatch_pending", ignore_result=True)
def dispatch_pending() -> int:
    """Send the queued runs whose message never reached the broker (or got lost there)."""
    return dispatch_pending_runs()


@shared_task(name="webapp.experiments.tasks.supervise_runs", ignore_result=True)
def supervise_runs() -> dict:
    """Mark runs without a recent heartbeat lost, and requeue (or fail) them; requeued runs
    are sent at once."""
    result = lifecycle.supervise()
    if result["queued"]:
        dispatch_pending_runs()
    return result
