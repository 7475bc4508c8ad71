"""Celery tasks: thin wrappers that take a primary key and hand the work to library code.

- `train_run(run_id)`: claim the run (or return quietly), fetch what it needs onto this host
  (its last checkpoint and its uploaded dataset, from the storage every host shares), train it
  with metatrain, evaluate it on the test split, store its files, and record the outcome.
- `dispatch_pending`, `supervise_runs`: the periodic tasks (celery beat, every 15 s, on the
  `default` queue) that resend undelivered runs and resume lost ones.

Delivery (settings.py): early acknowledgement, prefetch disabled (a busy worker holds no second
message), so a message is never redelivered behind a worker's back; a worker that dies or hangs
mid-run is caught by the heartbeat rule (`lifecycle.mark_stale_runs_lost`: the heartbeat means
progress) and its run resumed from the last stored checkpoint, on any host. A duplicate message
is harmless: only one worker can win the claim.
"""

from __future__ import annotations

import logging
import os
import traceback

import torch
from celery import shared_task
from django.conf import settings
from django.db import transaction

from . import lifecycle, run_files, workers
from .dispatch import dispatch_pending_runs, send_run
from .models import Evaluation, Run
from .sweeps import service as sweeps

logger = logging.getLogger(__name__)

# Celery's hard kill, a backstop behind the reporter's own deadline (which checkpoints and
# fails the run with a reason): only a process hung outside the training loop reaches it.
HARD_LIMIT_GRACE_SECONDS = 15 * 60
# How much of a traceback a failed run keeps in status_reason.
TRACEBACK_CHARS = 4000
NO_CAPACITY = "no-capacity"


def failure_reason(exc: BaseException) -> str:
    """The error on the first line, then the tail of the traceback (most recent frames), with
    this server's data and work folders replaced by their names (users see this text)."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if len(text) > TRACEBACK_CHARS:
        text = "...\n" + text[-TRACEBACK_CHARS:]
    return redact_paths(f"{type(exc).__name__}: {exc}\n\n{text}")


def redact_paths(text: str) -> str:
    """Replace this server's folders (data, datasets, work, media) by placeholders: a user must
    never learn where the server keeps files, least of all another user's dataset."""
    folders = {
        "DATASET_CACHE_ROOT": settings.DATASET_CACHE_ROOT,
        "DATASETS_ROOT": settings.DATASETS_ROOT,
        "RUNS_ROOT": settings.RUNS_ROOT,
        "MEDIA_ROOT": settings.MEDIA_ROOT,
        "METATRAIN_DATA": settings.METATRAIN_DATA,
    }
    # Longest first: one folder may lie inside another (datasets under media).
    for name, folder in sorted(folders.items(), key=lambda item: -len(str(item[1]))):
        for form in {str(folder), os.path.realpath(str(folder))}:
            if form and form != os.sep:
                text = text.replace(form, f"<{name}>")
    return text


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
    if not workers.has_room_for_another_run(hostname):
        # A GPU worker holding several runs and short of memory: leave the run queued for
        # another worker (the dispatcher sends it again).
        Run.objects.filter(pk=run_id, status=Run.Status.QUEUED).update(dispatched_at=None)
        logger.info("run %s left queued: not enough free GPU memory for another run", run_id)
        return NO_CAPACITY
    run = lifecycle.claim_run(run_id, worker=hostname or "in-process", device="", pid=os.getpid())
    if run is None:
        logger.info("run %s not claimed (gone, already claimed, or cancelled)", run_id)
        return "not-claimed"
    attempt = run.attempts
    try:
        return _train_claimed(run, attempt, hostname)
    finally:
        workers.set_current_run(hostname, None)
        lifecycle.process_done(run, attempt)
        _free_accelerator_memory()
        workers.sweep_run_folders()


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
            # cores; scale with more worker processes instead.
            torch.set_num_threads(settings.WORKER_TORCH_THREADS)
        config = local_config(run)
        compute = metatrain.Compute(device=device, workers=settings.WORKER_TASK_WORKERS)
        task_workers = compute.task_workers(config)
        # after the thread count it reports
        device_name = workers.describe_device(task_workers=task_workers)
        lifecycle.record_device(run, attempt, device_name)
        workers.set_current_run(hostname, run.pk, device=device_name)

        with reporter.keep_alive(settings.RUN_SILENT_PHASE_SECONDS):
            out_dir = run_files.prepare_attempt(run.pk, attempt, run.checkpoint_file.name)
            if run.evaluate_only:
                result = _weights_from_checkpoint(run, out_dir)
            else:
                result = metatrain.train(config, str(out_dir), reporter=reporter, compute=compute)
        if result.stopped:
            return _stopped(run, attempt, reporter.stop_reason, result.iterations_done)
        reporter.begin_evaluation(config.final_eval_tasks)
        with reporter.keep_alive(settings.RUN_SILENT_PHASE_SECONDS):
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
        stored = store_artifacts(run, attempt, out_dir)
        with transaction.atomic():
            Evaluation.create_from_result(
                run,
                evaluation,
                iteration=result.iterations_done,
                split=evaluation.split,
                kind=Evaluation.Kind.FINAL,
                extra={"final": True, **_final_extra(evaluation)},
            )
            done = lifecycle.complete_run(
                run,
                attempt,
                iteration=result.iterations_done,
                test_accuracy=evaluation.accuracy,
                test_ci95=evaluation.ci95,
                test_tasks=evaluation.tasks,
                test_loss_before=getattr(evaluation, "loss_before", None),
                test_loss_after=getattr(evaluation, "loss_after", None),
                eval_tasks_done=evaluation.tasks,
                evaluate_only=False,
                **stored,
            )
            if not done:
                transaction.set_rollback(True)
        if not done:
            for name in stored.values():
                run_files.delete(name)  # this attempt lost the run: nobody points to them
            return STOP_LOST
        # Succeeded: the initialization is what users download; checkpoints can go.
        lifecycle.drop_checkpoint(run)
        logger.info("run %s succeeded: test %s", run.pk, evaluation)
        return Run.Status.SUCCEEDED
    except Exception as exc:
        logger.exception("run %s failed", run.pk)
        reporter.flush()
        if reporter.stop_reason == STOP_LOST:
            return STOP_LOST
        lifecycle.fail_run(run, attempt, failure_reason(exc))
        return Run.Status.FAILED


def _weights_from_checkpoint(run: Run, out_dir):
    """For "evaluate now": the run's trained weights are its last checkpoint's; training is not
    resumed. Writes the initialization the evaluation and the downloads read."""
    import metatrain
    from metatrain.checkpoint import CHECKPOINT_FILE

    from .artifacts import initialization_from_checkpoint

    checkpoint = out_dir / CHECKPOINT_FILE
    if not checkpoint.is_file():
        raise FileNotFoundError("the run's checkpoint is missing from storage")
    iteration = initialization_from_checkpoint(checkpoint, out_dir)
    return metatrain.TrainResult(
        iterations_done=iteration,
        total_iterations=run.total_iterations,
        stopped=False,
        out_dir=str(out_dir),
    )


def local_config(run: Run):
    """The run's metatrain Config with its data on this host: a run on an uploaded dataset
    reads it from this host's cache (fetched from storage when missing)."""
    import metatrain
    from webapp.datasets.archive import local_folder

    config = metatrain.Config.from_dict(run.config)
    dataset = run.experiment.user_dataset
    if dataset is not None:
        config = config.replace(data_dir=str(local_folder(dataset)))
    return config


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
    # A sweep whose finish hook was missed (a worker killed after its commit) still advances.
    result["sweep_configurations_added"] = sweeps.top_up_active()
    return result
