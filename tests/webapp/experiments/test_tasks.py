"""train_run called in this process (no worker, no eager mode): the whole path from a queued
run to a finished one, on the real database, with real (tiny) training and real files."""

from __future__ import annotations

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone
from safetensors.torch import load_file

import metatrain
from webapp.experiments import run_files, services, workers
from webapp.experiments.models import Evaluation, MetricPoint, Run, RunAttempt
from webapp.experiments.reporter import DbReporter
from webapp.experiments.tasks import NO_CAPACITY, failure_reason, supervise_runs, train_run

# Committed transactions, as in a worker: the reporter's keep-alive thread has its own
# database connection and must see the claimed run.
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("one_torch_thread", "work_dirs", "broker_down"),
]


@pytest.fixture
def sine_run(owner, tiny_sine) -> Run:
    experiment = services.create_experiment(owner, name="sine", config=tiny_sine, seeds=[3])
    return experiment.runs.get()


def _steps(run: Run, name: str) -> list[int]:
    return list(
        MetricPoint.objects.filter(run=run, name=name)
        .order_by("step")
        .values_list("step", flat=True)
    )


@pytest.mark.slow
def test_it_trains_a_queued_run_to_succeeded_with_metrics_evaluation_and_files(sine_run):
    assert train_run(sine_run.pk) == Run.Status.SUCCEEDED

    run = Run.objects.get(pk=sine_run.pk)
    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    assert (run.iteration, run.total_iterations, run.checkpoint_iteration) == (20, 20, 20)
    assert run.attempts == 1 and run.finished_at is not None
    assert run.device.startswith("CPU (")
    assert run.seconds_per_iteration > 0

    assert _steps(run, "inner_loss") == list(range(1, 21))
    assert _steps(run, "meta_step_size") == list(range(1, 21))
    assert _steps(run, "validation_loss_after") == [10, 20]  # sine: losses, no accuracy

    final = Evaluation.objects.get(run=run, extra__final=True)
    assert (final.split, final.tasks, final.iteration) == ("test", 6, 20)
    assert final.extra["loss_before"] > 0 and final.extra["loss_after"] > 0
    assert run.test_tasks == 6 and run.test_ci95 == final.ci95
    assert run.test_accuracy is None  # regression has no accuracy

    attempt = RunAttempt.objects.get(run=run)
    assert (attempt.outcome, attempt.start_iteration) == (Run.Status.SUCCEEDED, 0)

    assert run.initialization.name == f"runs/{run.pk}/attempt-1/initialization.safetensors"
    assert run.config_file.name == f"runs/{run.pk}/attempt-1/config.json"
    # Succeeded: nothing resumes it, so its checkpoints and this host's scratch folder are gone.
    assert run.checkpoint_file.name == ""
    assert sorted(run_files.stored_files(run.pk)) == sorted(
        [run.initialization.name, run.config_file.name]
    )
    assert not run_files.attempt_dir(run.pk, 1).exists()
    tensors = load_file(default_storage.path(run.initialization.name))
    model = metatrain.load_initialization(default_storage.path(run.initialization.name))
    assert set(tensors) == set(model.state_dict())
    with default_storage.open(run.config_file.name) as fh:
        assert b'"sine_mlp"' in fh.read()


@pytest.mark.slow
def test_a_second_call_for_the_same_run_does_nothing(sine_run):
    train_run(sine_run.pk)
    before = Run.objects.get(pk=sine_run.pk)
    points = MetricPoint.objects.filter(run=before).count()

    assert train_run(sine_run.pk) == "not-claimed"
    after = Run.objects.get(pk=sine_run.pk)
    assert (after.status, after.attempts, after.finished_at) == (
        Run.Status.SUCCEEDED,
        1,
        before.finished_at,
    )
    assert MetricPoint.objects.filter(run=after).count() == points
    assert Evaluation.objects.filter(run=after, split="test").count() == 1


def test_a_missing_or_cancelled_run_is_not_trained(sine_run, settings):
    assert train_run(10**9) == "not-claimed"
    services.request_cancel(sine_run)
    assert train_run(sine_run.pk) == "not-claimed"
    assert Run.objects.get(pk=sine_run.pk).status == Run.Status.CANCELLED
    assert not run_files.legacy_run_dir(sine_run.pk).exists()


def test_a_run_that_raises_fails_with_the_error_and_its_traceback(owner, tmp_path, monkeypatch):
    """A worker whose machine lacks the data: the library raises DataError naming the path.
    (The web server has it: without it, the experiment would be refused before any run.)"""
    config = {"dataset": "omniglot", "meta_iters": 2, "validation_interval": 0}
    run = services.create_experiment(owner, name="bad", config=config, seeds=[0]).runs.get()
    monkeypatch.setenv("METATRAIN_DATA", str(tmp_path / "nothing-here"))

    assert train_run(run.pk) == Run.Status.FAILED
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert run.status_reason.startswith("DataError: ")
    assert "nothing-here" in run.status_reason
    assert "Traceback (most recent call last)" in run.status_reason
    assert RunAttempt.objects.get(run=run).outcome == Run.Status.FAILED
    assert run.finished_at is not None


@pytest.mark.slow
def test_a_run_stopped_by_shutdown_goes_back_to_the_queue_and_resumes(sine_run, monkeypatch):
    """SIGTERM's path without a worker: the shutdown flag rises after iteration 7; the run
    checkpoints there and is released; the next call resumes from 7 and writes each step
    exactly once."""
    original = DbReporter.on_iteration

    def on_iteration(self, iteration, metrics):
        original(self, iteration, metrics)
        if iteration == 7 and self.attempt == 1:
            workers.set_shutting_down(True)

    monkeypatch.setattr(DbReporter, "on_iteration", on_iteration)
    try:
        assert train_run(sine_run.pk) == Run.Status.QUEUED
    finally:
        workers.set_shutting_down(False)
    run = Run.objects.get(pk=sine_run.pk)
    assert (run.status, run.checkpoint_iteration, run.worker) == (Run.Status.QUEUED, 7, "")
    assert "worker shut down at iteration 7" in run.status_reason
    assert _steps(run, "inner_loss") == list(range(1, 8))
    # The checkpoint is in storage, where any host resumes from; this host's folder is gone.
    assert run.checkpoint_file.name == run_files.checkpoint_name(run.pk, 1, 7)
    assert default_storage.exists(run.checkpoint_file.name)
    assert not run_files.attempt_dir(run.pk, 1).exists()

    assert train_run(sine_run.pk) == Run.Status.SUCCEEDED
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED and run.attempts == 2
    assert _steps(run, "inner_loss") == list(range(1, 21))
    attempts = list(RunAttempt.objects.filter(run=run).values_list("outcome", "start_iteration"))
    assert attempts == [("released", 0), (Run.Status.SUCCEEDED, 7)]


class _Killed(BaseException):
    """The worker process dies here: no handler in the task runs, nothing more is written."""


def test_a_worker_killed_between_a_checkpoint_file_and_its_record_leaves_no_gap(
    owner, tiny_sine, monkeypatch, settings
):
    """SIGKILL after checkpoint.pt at iteration 5 was written on the worker's disk but before
    it was uploaded and recorded. Every point up to 5 is already stored (no validation at 5
    flushes them by chance); the next attempt, on any host, resumes from the last recorded
    checkpoint (none: the start), trains 1-5 again and overwrites their points: no gap, no
    duplicate."""
    config = {**tiny_sine, "checkpoint_interval": 5}
    run = services.create_experiment(owner, name="sine", config=config, seeds=[3]).runs.get()
    original = DbReporter.on_checkpoint

    def on_checkpoint(self, iteration, path):
        if iteration == 5 and self.attempt == 1:
            raise _Killed
        original(self, iteration, path)

    monkeypatch.setattr(DbReporter, "on_checkpoint", on_checkpoint)
    with pytest.raises(_Killed):
        train_run(run.pk)
    run.refresh_from_db()
    assert (run.status, run.checkpoint_iteration) == (Run.Status.RUNNING, 0)  # never recorded
    assert _steps(run, "inner_loss") == list(range(1, 6))

    settings.RUN_LOST_AFTER_SECONDS = 0
    assert supervise_runs()["lost"] == [run.pk]
    assert train_run(run.pk) == Run.Status.SUCCEEDED
    assert _steps(run, "inner_loss") == list(range(1, 21))
    attempts = list(RunAttempt.objects.filter(run=run).values_list("outcome", "start_iteration"))
    assert attempts == [("lost", 0), (Run.Status.SUCCEEDED, 0)]
    assert MetricPoint.objects.filter(run=run, name="inner_loss").count() == 20


def test_a_cpu_run_trains_with_the_configured_number_of_torch_threads(sine_run, settings):
    import torch

    settings.WORKER_TORCH_THREADS = 1
    torch.set_num_threads(2)
    assert train_run(sine_run.pk) == Run.Status.SUCCEEDED
    sine_run.refresh_from_db()
    assert torch.get_num_threads() == 1
    assert sine_run.device == "CPU (1 thread)"


def _series(run: Run) -> dict[tuple[str, int], float]:
    return {(p.name, p.step): p.value for p in MetricPoint.objects.filter(run=run)}


@pytest.mark.slow
def test_task_workers_give_a_cpu_run_the_same_results_as_one_process(owner, tiny_sine, settings):
    """WORKER_TASK_WORKERS: a meta-batch's training tasks (each from a fresh Adam) and the
    evaluation tasks run in worker processes, and every number stored is the same as with
    none (same seed). Adam, because SGD sine tasks are stacked in one process instead."""
    config = {**tiny_sine, "meta_batch": 2, "inner_optimizer": "adam", "keep_adam_state": False}
    alone, side_by_side = (
        services.create_experiment(owner, name=name, config=config, seeds=[3]).runs.get()
        for name in ("alone", "side by side")
    )
    settings.WORKER_TASK_WORKERS = 1
    assert train_run(alone.pk) == Run.Status.SUCCEEDED
    settings.WORKER_TASK_WORKERS = 2
    assert train_run(side_by_side.pk) == Run.Status.SUCCEEDED

    alone.refresh_from_db()
    side_by_side.refresh_from_db()
    assert side_by_side.device == "CPU (1 thread, 2 task workers)"
    assert alone.device == "CPU (1 thread)"
    assert _series(side_by_side) == _series(alone)
    assert _series(alone)[("validation_loss_after", 20)] > 0
    finals = [Evaluation.objects.get(run=r, extra__final=True) for r in (alone, side_by_side)]
    untimed = [{k: v for k, v in f.extra.items() if k != "seconds"} for f in finals]
    assert finals[0].ci95 == finals[1].ci95 and untimed[0] == untimed[1]
    weights = [
        load_file(default_storage.path(r.initialization.name)) for r in (alone, side_by_side)
    ]
    assert all(weights[0][k].equal(weights[1][k]) for k in weights[0])


def test_a_gpu_without_room_for_another_run_leaves_it_queued_for_another_worker(
    sine_run, monkeypatch
):
    monkeypatch.setattr(workers, "has_room_for_another_run", lambda hostname: False)
    Run.objects.filter(pk=sine_run.pk).update(dispatched_at=timezone.now())
    assert train_run(sine_run.pk) == NO_CAPACITY
    run = Run.objects.get(pk=sine_run.pk)
    assert (run.status, run.attempts, run.dispatched_at) == (Run.Status.QUEUED, 0, None)


def test_a_failure_reason_names_the_servers_folders_never_their_paths(settings, tmp_path):
    settings.DATASET_CACHE_ROOT = tmp_path / "srv" / "cache"
    settings.METATRAIN_DATA = str(tmp_path / "srv" / "data")
    try:
        raise FileNotFoundError(
            f"{settings.DATASET_CACHE_ROOT}/0af3/train not found; "
            f"{settings.METATRAIN_DATA}/miniimagenet not found"
        )
    except FileNotFoundError as exc:
        reason = failure_reason(exc)
    assert str(tmp_path) not in reason
    assert "<DATASET_CACHE_ROOT>/0af3/train not found" in reason
    assert "<METATRAIN_DATA>/miniimagenet not found" in reason
