"""A real `celery worker` process, a real Redis, this test's database and real training:
runs go from queued to succeeded, cancelled, back to the queue on SIGTERM, and lost then
resumed after SIGKILL."""

from __future__ import annotations

import time

import pytest
from django.core.files.storage import default_storage
from safetensors.torch import load_file

import metatrain
from metatrain.data import omniglot_available
from webapp.experiments import services
from webapp.experiments.models import Evaluation, MetricPoint, Run, RunAttempt, Worker

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FINAL = {Run.Status.SUCCEEDED, Run.Status.FAILED, Run.Status.CANCELLED}


def _config(name: str, **overrides) -> dict:
    cfg = metatrain.preset(name, **overrides).to_dict()
    cfg.pop("seed")
    return cfg


def _tiny_sine() -> dict:
    return _config(
        "sine",
        meta_iters=30,
        checkpoint_interval=10,
        validation_interval=10,
        validation_tasks=4,
        final_eval_tasks=8,
    )


def _endless_sine() -> dict:
    """Far longer than any test: it only ends by cancel, shutdown or kill."""
    return _config("sine", meta_iters=1_000_000, checkpoint_interval=20, validation_interval=0)


def _submit(owner, config: dict, name: str = "e2e", seeds=(0,)) -> Run:
    """As the view does: saved in one transaction, sent to Redis after commit."""
    experiment = services.create_experiment(owner, name=name, config=config, seeds=list(seeds))
    return experiment.runs.order_by("seed").first()


def _steps(run: Run, name: str) -> list[int]:
    return list(
        MetricPoint.objects.filter(run=run, name=name)
        .order_by("step")
        .values_list("step", flat=True)
    )


def _training(pk: int, past: int = 0):
    """A predicate: the run is running and has reported an iteration beyond `past`."""

    def check():
        run = Run.objects.get(pk=pk)
        return run if run.status == Run.Status.RUNNING and run.iteration > past else None

    return check


def _assert_stored_initialization(run: Run) -> None:
    assert (
        run.initialization.name
        == f"runs/{run.pk}/attempt-{run.attempts}/initialization.safetensors"
    )
    path = default_storage.path(run.initialization.name)
    model = metatrain.load_initialization(path)
    assert set(load_file(path)) == set(model.state_dict())
    assert default_storage.exists(run.config_file.name)


def test_a_worker_trains_a_sine_run_to_succeeded(owner, celery_worker, wait_for_run):
    run = _submit(owner, _tiny_sine())
    run = wait_for_run(run.pk, FINAL, timeout=120, worker=celery_worker)

    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    assert run.worker == celery_worker.hostname
    assert _steps(run, "inner_loss") == list(range(1, 31))
    assert _steps(run, "validation_loss_after") == [10, 20, 30]
    final = Evaluation.objects.get(run=run, extra__final=True)
    assert (final.split, final.tasks) == ("test", 8)
    assert run.test_tasks == 8 and run.test_ci95 is not None
    _assert_stored_initialization(run)
    worker = Worker.objects.get(hostname=celery_worker.hostname)
    assert worker.current_run is None
    assert worker.device.startswith("CPU (")
    assert set(worker.queues.split(",")) == {"cpu", "any"}


@pytest.mark.skipif(not omniglot_available(), reason="Omniglot data not found (METATRAIN_DATA)")
def test_a_worker_trains_an_omniglot_run_on_real_data_with_task_workers(
    owner, start_worker, wait_for_run
):
    worker = start_worker(env={"WORKER_TASK_WORKERS": "2"})
    config = _config(
        "omniglot-5way-1shot",
        meta_iters=4,
        checkpoint_interval=2,
        validation_interval=2,
        validation_tasks=3,
        final_eval_tasks=4,
        eval_inner_iters=5,
    )
    run = _submit(owner, config)
    run = wait_for_run(run.pk, FINAL, timeout=240, worker=worker)

    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    assert run.device == "CPU (1 thread, 2 task workers)"
    assert (run.dataset, run.ways, run.shots) == ("omniglot", 5, 1)
    assert _steps(run, "inner_accuracy") == [1, 2, 3, 4]
    assert _steps(run, "validation_accuracy") == [2, 4]
    assert 0.0 <= run.test_accuracy <= 1.0 and run.test_tasks == 4
    final = Evaluation.objects.get(run=run, extra__final=True)
    assert (final.ways, final.shots, final.accuracy) == (5, 1, run.test_accuracy)
    _assert_stored_initialization(run)


def test_cancelling_a_running_run_ends_it_cancelled_with_its_points(
    owner, celery_worker, e2e_redis, wait_for, wait_for_run
):
    first = _submit(owner, _endless_sine(), name="endless")
    wait_for(_training(first.pk, 5), 90, "the first run to train", worker=celery_worker)
    assert Worker.objects.get(hostname=celery_worker.hostname).current_run_id == first.pk
    second = _submit(owner, _tiny_sine(), name="waits")

    # A busy worker does not hold the second message (prefetch disabled): it waits in Redis
    # for whichever worker is free first.
    time.sleep(3)
    assert e2e_redis.llen("any") == 1
    assert Run.objects.get(pk=second.pk).status == Run.Status.QUEUED

    services.request_cancel(first)
    first = wait_for_run(first.pk, FINAL, timeout=60, worker=celery_worker)
    assert first.status == Run.Status.CANCELLED
    assert first.status_reason.startswith("cancelled at iteration")
    steps = _steps(first, "inner_loss")
    assert len(steps) >= 5 and steps == list(range(1, len(steps) + 1))
    assert RunAttempt.objects.get(run=first).outcome == Run.Status.CANCELLED

    # The worker is free again and takes the waiting run.
    second = wait_for_run(second.pk, FINAL, timeout=120, worker=celery_worker)
    assert second.status == Run.Status.SUCCEEDED, second.status_reason


def test_sigterm_checkpoints_and_requeues_and_another_worker_resumes(
    owner, start_worker, wait_for, wait_for_run
):
    first_worker = start_worker(name="first")
    run = _submit(owner, _endless_sine(), name="endless")
    wait_for(_training(run.pk, 25), 90, "its first checkpoint", worker=first_worker)

    assert first_worker.terminate(timeout=60) == 0, first_worker.log()[-3000:]
    run.refresh_from_db()
    assert run.status == Run.Status.QUEUED, run.status_reason
    assert run.checkpoint_iteration >= 25
    assert "worker shut down at iteration" in run.status_reason
    stopped_at = run.checkpoint_iteration
    assert max(_steps(run, "inner_loss")) == stopped_at  # every point up to it is stored
    assert RunAttempt.objects.get(run=run, number=1).outcome == "released"

    second_worker = start_worker(name="second")
    wait_for(_training(run.pk, stopped_at), 90, "the run to resume", worker=second_worker)
    attempt = RunAttempt.objects.get(run=run, number=2)
    assert (attempt.worker, attempt.start_iteration) == (second_worker.hostname, stopped_at)

    services.request_cancel(run)
    run = wait_for_run(run.pk, FINAL, timeout=60, worker=second_worker)
    assert run.status == Run.Status.CANCELLED
    steps = _steps(run, "inner_loss")
    assert steps == list(range(1, len(steps) + 1))  # no gap, no duplicate across attempts


# A SIGKILLed worker detected lost and its run resumed from the stored checkpoint: see
# tests/e2e/test_fleet_e2e.py (across two hosts) and the chaos tool's kill cycle.
