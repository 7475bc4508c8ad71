"""DbReporter (webapp/experiments/reporter.py) on the real database, with a fake clock so that
throttling is tested without sleeping."""

from __future__ import annotations

import time

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext

from metatrain import EvalResult
from webapp.experiments import lifecycle, services, workers
from webapp.experiments.models import Evaluation, MetricPoint, Run, RunAttempt
from webapp.experiments.reporter import DbReporter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def run(owner, make_experiment) -> Run:
    queued = make_experiment(owner).runs.get()
    return lifecycle.claim_run(queued.pk, worker="w1", device="cpu")


def _reporter(run: Run, clock: FakeClock, attempt: int = 1, **kw) -> DbReporter:
    kw.setdefault("heartbeat_seconds", 5)
    return DbReporter(run, attempt, clock=clock, **kw)


def _metrics(i: int, scale: float = 1.0) -> dict[str, float]:
    return {"inner_loss": scale / i, "inner_accuracy": 0.5, "meta_step_size": 1.0, "seconds": 0.1}


def _points(run: Run, name: str = "inner_loss") -> dict[int, float]:
    return dict(
        MetricPoint.objects.filter(run=run, name=name).order_by("step").values_list("step", "value")
    )


def _eval_result(**kw) -> EvalResult:
    fields = dict(
        accuracy=0.6,
        ci95=0.05,
        tasks=20,
        ways=5,
        shots=1,
        queries=1,
        transductive=True,
        split="validation",
        ci_method="normal",
    )
    return EvalResult(**{**fields, **kw})


def test_it_buffers_points_and_writes_them_in_one_batch_when_the_heartbeat_is_due(run, clock):
    reporter = _reporter(run, clock)
    reporter.on_start({"start_iteration": 0, "total_iterations": 100})
    with CaptureQueriesContext(connection) as queries:
        for i in range(1, 11):
            reporter.on_iteration(i, _metrics(i))
    assert len(queries) == 0
    assert MetricPoint.objects.filter(run=run).count() == 0

    clock.now += 5
    with CaptureQueriesContext(connection) as queries:
        reporter.on_iteration(11, _metrics(11))
    # 11 iterations x 3 series in one INSERT, plus the progress UPDATE.
    assert len(queries) <= 3
    assert _points(run) == {i: pytest.approx(1 / i) for i in range(1, 12)}
    assert set(MetricPoint.objects.filter(run=run).values_list("name", flat=True)) == {
        "inner_loss",
        "inner_accuracy",
        "meta_step_size",
    }  # `seconds` is not a series: it feeds seconds_per_iteration
    run.refresh_from_db()
    assert (run.iteration, run.total_iterations) == (11, 100)
    assert run.seconds_per_iteration == pytest.approx(0.1)


def test_a_full_buffer_is_written_before_the_heartbeat_is_due(run, clock):
    reporter = _reporter(run, clock, batch_size=6)
    reporter.on_start({"start_iteration": 0, "total_iterations": 100})
    reporter.on_iteration(1, _metrics(1))
    assert MetricPoint.objects.filter(run=run).count() == 0
    reporter.on_iteration(2, _metrics(2))
    assert MetricPoint.objects.filter(run=run).count() == 6


def test_writing_the_same_steps_again_overwrites_them(run, clock):
    first = _reporter(run, clock)
    for i in range(1, 6):
        first.on_iteration(i, _metrics(i, scale=1.0))
    first.flush()
    second = _reporter(run, clock)
    for i in range(3, 8):
        second.on_iteration(i, _metrics(i, scale=10.0))
    second.flush()
    expected = {1: 1.0, 2: 0.5} | {i: 10.0 / i for i in range(3, 8)}
    assert _points(run) == pytest.approx(expected)
    assert MetricPoint.objects.filter(run=run, name="inner_loss").count() == 7


def test_a_resumed_attempt_deletes_what_came_after_its_checkpoint(run, clock):
    first = _reporter(run, clock)
    for i in range(1, 11):
        first.on_iteration(i, _metrics(i))
        if i in (4, 8):
            first.on_validation(i, _eval_result(accuracy=i / 10))
    first.on_checkpoint(5, "/tmp/checkpoint.pt")
    first.flush()
    assert max(_points(run)) == 10

    resumed = _reporter(run, clock)
    resumed.on_start({"start_iteration": 5, "total_iterations": 10})
    assert list(_points(run)) == [1, 2, 3, 4, 5]
    assert list(_points(run, "validation_accuracy")) == [4]
    assert list(Evaluation.objects.filter(run=run).values_list("iteration", flat=True)) == [4]
    assert RunAttempt.objects.get(run=run, number=1).start_iteration == 5
    run.refresh_from_db()
    assert (run.iteration, run.checkpoint_iteration) == (5, 5)


def test_a_checkpoint_is_recorded_only_after_its_points_are_stored(run, clock):
    reporter = _reporter(run, clock)
    reporter.on_start({"start_iteration": 0, "total_iterations": 10})
    for i in range(1, 5):
        reporter.on_iteration(i, _metrics(i))
    assert MetricPoint.objects.filter(run=run).count() == 0
    reporter.on_checkpoint(4, "/tmp/checkpoint.pt")
    assert list(_points(run)) == [1, 2, 3, 4]
    run.refresh_from_db()
    assert run.checkpoint_iteration == 4


def test_before_a_checkpoint_file_is_written_every_point_up_to_it_is_stored(run, clock):
    reporter = _reporter(run, clock)
    reporter.on_start({"start_iteration": 0, "total_iterations": 10})
    for i in range(1, 5):
        reporter.on_iteration(i, _metrics(i))
    assert reporter.before_checkpoint(4) is True
    assert list(_points(run)) == [1, 2, 3, 4]
    run.refresh_from_db()
    assert run.checkpoint_iteration == 0  # recorded only once the file exists (on_checkpoint)


def _refuse_metric_inserts(execute, sql, params, many, context):
    """A database that is down for metric points (an outage as the reporter sees it)."""
    if "INSERT" in sql and "metricpoint" in sql:
        raise OperationalError("server closed the connection unexpectedly")
    return execute(sql, params, many, context)


@pytest.mark.django_db(transaction=True)  # the reporter closes the failed connection
def test_a_checkpoint_is_skipped_while_its_points_cannot_be_stored(run, clock):
    reporter = _reporter(run, clock)
    reporter.on_start({"start_iteration": 0, "total_iterations": 10})
    for i in range(1, 5):
        reporter.on_iteration(i, _metrics(i))
    with connection.execute_wrapper(_refuse_metric_inserts):
        assert reporter.before_checkpoint(4) is False
    assert _points(run) == {}
    # The points stayed in the buffer: the next checkpoint stores them.
    assert reporter.before_checkpoint(4) is True
    assert list(_points(run)) == [1, 2, 3, 4]


def test_the_heartbeat_writes_at_most_once_per_interval_and_is_cheap(run, clock):
    reporter = _reporter(run, clock)
    with CaptureQueriesContext(connection) as queries:
        reporter.heartbeat()
    assert len(queries) == 1
    first = Run.objects.get(pk=run.pk).heartbeat_at

    started = time.perf_counter()
    with CaptureQueriesContext(connection) as queries:
        for _ in range(10_000):
            reporter.heartbeat()
    elapsed = time.perf_counter() - started
    assert len(queries) == 0
    assert elapsed < 0.1  # about a microsecond a call

    clock.now += 5
    reporter.heartbeat()
    assert Run.objects.get(pk=run.pk).heartbeat_at > first


def test_validation_adds_an_evaluation_and_its_points(run, clock):
    reporter = _reporter(run, clock)
    reporter.on_validation(50, _eval_result(accuracy=0.75, ci95=0.04))
    evaluation = Evaluation.objects.get(run=run)
    assert (evaluation.split, evaluation.iteration, evaluation.accuracy, evaluation.tasks) == (
        "validation",
        50,
        0.75,
        20,
    )
    assert _points(run, "validation_accuracy") == {50: 0.75}
    assert _points(run, "validation_ci95") == {50: 0.04}


def test_a_sine_validation_stores_its_losses(run, clock):
    reporter = _reporter(run, clock)
    result = _eval_result(accuracy=None, ci95=0.2, ways=None, loss_before=3.0, loss_after=0.5)
    reporter.on_validation(10, result)
    assert _points(run, "validation_loss_after") == {10: 0.5}
    assert not _points(run, "validation_accuracy")
    assert Evaluation.objects.get(run=run).extra["loss_before"] == 3.0


def test_non_finite_values_are_skipped(run, clock):
    reporter = _reporter(run, clock)
    reporter.on_iteration(1, {"inner_loss": float("nan"), "meta_step_size": 1.0})
    reporter.flush()
    assert not _points(run)
    assert _points(run, "meta_step_size") == {1: 1.0}


def test_should_stop_sees_a_cancel_request_within_the_poll_interval(run, clock):
    reporter = _reporter(run, clock, cancel_poll_seconds=2)
    assert not reporter.should_stop()
    services.request_cancel(run)
    with CaptureQueriesContext(connection) as queries:
        assert not reporter.should_stop()  # polled less than 2 s ago
    assert len(queries) == 0
    clock.now += 2
    assert reporter.should_stop()
    assert reporter.stop_reason == "cancel"


def test_should_stop_at_once_when_the_worker_shuts_down(run, clock):
    reporter = _reporter(run, clock)
    assert not reporter.should_stop()
    try:
        workers.set_shutting_down(True)
        with CaptureQueriesContext(connection) as queries:
            assert reporter.should_stop()
        assert len(queries) == 0
    finally:
        workers.set_shutting_down(False)
    assert reporter.stop_reason == "shutdown"


def test_should_stop_when_the_run_was_given_to_another_attempt(run, clock, settings):
    reporter = _reporter(run, clock)
    Run.objects.filter(pk=run.pk).update(status=Run.Status.LOST)
    assert reporter.should_stop()
    assert reporter.stop_reason == "lost"


def test_a_fenced_progress_write_stops_the_attempt(run, clock):
    reporter = _reporter(run, clock)
    Run.objects.filter(pk=run.pk).update(attempts=2)  # claimed again elsewhere
    reporter.heartbeat()
    assert reporter.stop_reason == "lost"
    assert Run.objects.get(pk=run.pk).iteration == 0


def test_should_stop_after_the_time_limit(run, clock):
    reporter = _reporter(run, clock, time_limit_seconds=60)
    assert not reporter.should_stop()
    clock.now += 60
    assert reporter.should_stop()
    assert reporter.stop_reason == "deadline"


@pytest.mark.django_db(transaction=True)
def test_keep_alive_beats_while_the_library_is_silent_and_stops_when_it_speaks(run):
    reporter = DbReporter(run, 1, heartbeat_seconds=0.05)
    Run.objects.filter(pk=run.pk).update(heartbeat_at=None)
    with reporter.keep_alive(max_silence_seconds=30):
        time.sleep(0.5)  # loading a dataset, say
        first = Run.objects.get(pk=run.pk).heartbeat_at
        assert first is not None
        time.sleep(0.2)
        assert Run.objects.get(pk=run.pk).heartbeat_at > first
    stopped = Run.objects.get(pk=run.pk).heartbeat_at
    time.sleep(0.2)
    assert Run.objects.get(pk=run.pk).heartbeat_at == stopped  # the thread is gone


@pytest.mark.django_db(transaction=True)
def test_keep_alive_gives_up_after_the_longest_silence(run):
    reporter = DbReporter(run, 1, heartbeat_seconds=0.05)
    with reporter.keep_alive(max_silence_seconds=0.2):
        time.sleep(0.4)
        Run.objects.filter(pk=run.pk).update(heartbeat_at=None)
        time.sleep(0.2)
        assert Run.objects.get(pk=run.pk).heartbeat_at is None  # a hung loop goes stale


@pytest.mark.django_db(transaction=True)
def test_keep_alive_notices_a_lost_claim(run):
    reporter = DbReporter(run, 1, heartbeat_seconds=0.05)
    Run.objects.filter(pk=run.pk).update(status=Run.Status.LOST)
    with reporter.keep_alive(max_silence_seconds=30):
        time.sleep(0.3)
    assert reporter.stop_reason == "lost"
