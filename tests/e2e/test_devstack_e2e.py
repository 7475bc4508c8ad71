"""webapp.devstack against a real training worker: pause() freezes the worker and its pool
child mid-run (nothing more reaches the database), resume() lets the same run go on."""

from __future__ import annotations

import time

import pytest

import metatrain
from webapp.devstack import process_state
from webapp.experiments import services
from webapp.experiments.models import Run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FINAL = {Run.Status.SUCCEEDED, Run.Status.FAILED, Run.Status.CANCELLED}


def _endless_sine() -> dict:
    """Far longer than the test: it ends by cancel."""
    config = metatrain.preset(
        "sine", meta_iters=1_000_000, checkpoint_interval=50, validation_interval=0
    ).to_dict()
    config.pop("seed")
    return config


def _progress(pk: int) -> tuple[int, object]:
    run = Run.objects.get(pk=pk)
    return run.iteration, run.heartbeat_at


def test_a_paused_worker_writes_nothing_until_resumed_and_then_trains_on(
    owner, celery_worker, wait_for, wait_for_run
):
    experiment = services.create_experiment(owner, name="paused", config=_endless_sine(), seeds=[0])
    run = experiment.runs.get()
    wait_for(
        lambda: Run.objects.filter(pk=run.pk, status="running", iteration__gt=0).exists(),
        90,
        "the run to train",
        worker=celery_worker,
    )
    children = celery_worker.children()
    assert children, "a prefork worker trains in a pool child"
    group = [celery_worker.pid, *children]

    celery_worker.pause()
    wait_for(
        lambda: all(process_state(pid) == "T" for pid in group),
        10,
        f"every process of the worker ({group}) to be stopped",
    )
    time.sleep(0.5)  # a write in flight when the signal landed has committed by now
    frozen = _progress(run.pk)
    time.sleep(3)  # three heartbeat periods (RUN_HEARTBEAT_SECONDS=1)
    assert _progress(run.pk) == frozen
    assert celery_worker.alive

    celery_worker.resume()
    wait_for(
        lambda: all(process_state(pid) not in ("T", None) for pid in group),
        10,
        f"every process of the worker ({group}) to run again",
    )
    wait_for(
        lambda: Run.objects.get(pk=run.pk).iteration > frozen[0],
        30,
        "the run to train on after SIGCONT",
        worker=celery_worker,
    )
    services.request_cancel(run)
    run = wait_for_run(run.pk, FINAL, timeout=60, worker=celery_worker)
    assert run.status == Run.Status.CANCELLED
    assert run.attempts == 1  # the same attempt went on: nothing noticed the pause
