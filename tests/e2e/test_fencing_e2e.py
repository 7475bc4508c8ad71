"""A worker that lost its run changes nothing, and a hung run is caught: real worker processes
paused with SIGSTOP and woken with SIGCONT, task workers stopped under a live worker, against a
real broker and this test's database.

- Pause/resume (the fault probe's exact scenario): two workers share RUNS_ROOT and storage.
  Worker A is paused mid-run; the supervisor declares the run lost; worker B resumes it and
  checkpoints further; B is paused and A woken. A must stop without writing a point, an
  evaluation, a checkpoint file or a row; B, woken, finishes the run.
- Hang: the task workers of a run are stopped while the Celery worker stays alive. Only
  progress stamps the heartbeat, so the run goes stale, is declared stalled, the stuck worker
  process is recycled and the run resumes on a fresh one.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time

import pytest
from django.core.files.storage import default_storage

import metatrain
from webapp.experiments import run_files, services
from webapp.experiments.models import Evaluation, MetricPoint, Run, RunAttempt
from webapp.experiments.tasks import supervise_runs
from webapp.experiments.watchdog import descendants, is_gone

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FINAL = {Run.Status.SUCCEEDED, Run.Status.FAILED, Run.Status.CANCELLED}


def _endless(**overrides) -> dict:
    config = metatrain.preset(
        "sine",
        meta_iters=1_000_000,
        checkpoint_interval=20,
        validation_interval=10,
        validation_tasks=2,
        **overrides,
    ).to_dict()
    config.pop("seed")
    return config


def _training(pk: int, past: int = 0, attempt: int | None = None):
    def check():
        run = Run.objects.get(pk=pk)
        ok = run.status == Run.Status.RUNNING and run.iteration > past
        return run if ok and (attempt is None or run.attempts == attempt) else None

    return check


def _snapshot(run: Run) -> dict:
    """Everything a woken worker could change: the row, its points and evaluations, and the
    stored files with their contents."""
    row = Run.objects.filter(pk=run.pk).values().get()
    row.pop("heartbeat_at")  # written by nobody once both are paused, but not part of state
    files = {
        name: hashlib.sha256(default_storage.open(name).read()).hexdigest()
        for name in run_files.stored_files(run.pk)
    }
    return {
        "row": row,
        "points": sorted(MetricPoint.objects.filter(run=run).values_list("name", "step", "value")),
        "evaluations": sorted(
            Evaluation.objects.filter(run=run).values_list(
                "kind", "split", "iteration", "accuracy", "ci95"
            )
        ),
        "files": files,
    }


def test_a_worker_woken_after_losing_its_run_writes_nothing(
    owner, start_worker, wait_for, wait_for_run, settings, tmp_path
):
    settings.RUN_LOST_AFTER_SECONDS = 3
    shared = {"RUN_RECYCLE_GRACE_SECONDS": "600"}  # A must stop by itself, not be killed
    worker_a = start_worker(name="a", env=shared)
    run = services.create_experiment(owner, name="paused", config=_endless(), seeds=[0]).runs.get()
    wait_for(_training(run.pk, 30), 120, "worker A to train", worker=worker_a)

    worker_a.pause()
    paused_at = Run.objects.get(pk=run.pk).iteration
    assert wait_for(lambda: supervise_runs()["lost"], 30, "the supervisor to notice") == [run.pk]

    worker_b = start_worker(name="b", env=shared)
    resumed = wait_for(
        lambda: (
            lambda r: r if r.attempts == 2 and r.checkpoint_iteration >= paused_at + 40 else None
        )(Run.objects.get(pk=run.pk)),
        120,
        "worker B to resume and checkpoint further",
        worker=worker_b,
    )
    assert resumed.checkpoint_file.name.startswith(f"runs/{run.pk}/checkpoints/attempt-2-")
    worker_b.pause()
    time.sleep(1)  # B's last in-flight write, if any, lands before the snapshot
    before = _snapshot(run)

    worker_a.resume()
    wait_for(
        lambda: RunAttempt.objects.get(run=run, number=1).process_done_at,
        60,
        "worker A to notice and return from its attempt",
        worker=worker_a,
    )
    time.sleep(2)
    assert _snapshot(run) == before
    assert "lost its claim" in worker_a.log()
    # A wrote no checkpoint file either, not even into its own scratch folder.
    a_folder = run_files.attempt_dir(run.pk, 1)  # the workers share this process's RUNS_ROOT
    assert not a_folder.exists() or not any(
        p.name == "checkpoint.pt" and p.stat().st_mtime > time.time() - 10
        for p in a_folder.iterdir()
    )

    worker_b.resume()
    wait_for(_training(run.pk, before["row"]["iteration"] + 10, attempt=2), 60, "B to go on")
    services.request_cancel(run)
    run = wait_for_run(run.pk, FINAL, timeout=60, worker=worker_b)
    assert run.status == Run.Status.CANCELLED
    steps = list(
        MetricPoint.objects.filter(run=run, name="inner_loss")
        .order_by("step")
        .values_list("step", flat=True)
    )
    assert steps == list(range(1, len(steps) + 1))


def test_a_run_whose_task_workers_hang_is_declared_stalled_and_resumed_on_a_fresh_process(
    owner, start_worker, wait_for, wait_for_run, settings
):
    settings.RUN_LOST_AFTER_SECONDS = 4
    worker = start_worker(
        name="hangs",
        env={
            "WORKER_TASK_WORKERS": "2",
            "RUN_RECYCLE_GRACE_SECONDS": "2",
            "WORKER_HEARTBEAT_SECONDS": "1",
        },
    )
    # Adam from a fresh state per task: a meta-batch's tasks run in the task workers.
    config = _endless(meta_batch=2, inner_optimizer="adam", keep_adam_state=False)
    run = services.create_experiment(owner, name="hangs", config=config, seeds=[0]).runs.get()
    wait_for(_training(run.pk, 25), 120, "the run to train", worker=worker)

    attempt = RunAttempt.objects.get(run=run, number=1)
    task_workers = descendants(attempt.pid)
    assert len(task_workers) == 2
    for pid in task_workers:
        os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    hung_at = Run.objects.get(pk=run.pk).iteration

    assert wait_for(lambda: supervise_runs()["lost"], 60, "the stall to be detected") == [run.pk]
    detected = time.monotonic() - stopped
    reason = RunAttempt.objects.get(run=run, number=1).reason
    assert reason.startswith("stalled: no progress"), reason

    # The worker kills its stuck process (and the stopped task workers); Celery starts a new
    # one, which takes the requeued run.
    wait_for(
        lambda: RunAttempt.objects.get(run=run, number=1).process_done_at,
        60,
        "the stuck process to be recycled",
        worker=worker,
    )
    assert "recycled" in RunAttempt.objects.get(run=run, number=1).reason
    # The worker waits for the killed tree to exit before closing the attempt; the grace here
    # only covers a worker whose wait ran out on a loaded machine (it logs that and goes on).
    wait_for(
        lambda: all(is_gone(pid) for pid in [attempt.pid, *task_workers]),
        15,
        "the stuck process and its task workers to exit",
        worker=worker,
    )
    wait_for(_training(run.pk, hung_at, attempt=2), 120, "the run to resume", worker=worker)
    assert RunAttempt.objects.get(run=run, number=2).worker == worker.hostname
    print(f"hang detected after {detected:.1f} s")  # noqa: T201 (shown with -s)

    services.request_cancel(run)
    run = wait_for_run(run.pk, FINAL, timeout=60, worker=worker)
    assert run.status == Run.Status.CANCELLED
