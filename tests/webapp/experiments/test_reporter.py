"""DbReporter (webapp/experiments/reporter.py) on the real database, with a fake clock so that
throttling is tested without sleeping."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import OperationalError, connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from metatrain import EvalResult
from webapp.experiments import lifecycle, run_files, services, workers
from webapp.experiments.models import Evaluation, MetricPoint, Run, RunAttempt
from webapp.experiments.reporter import STOP_LOST, DbReporter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def _storage(work_dirs):
    """Checkpoints are uploaded to the storage: a MEDIA_ROOT of this test's own."""


@pytest.fixture
def checkpoint(tmp_path):
    """A file standing in for the checkpoint metatrain wrote."""
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"weights")
    return str(path)


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
    # The fence (the run's row locked while this attempt holds it), 11 iterations x 3 series in
    # one INSERT, and the progress UPDATE; savepoints only exist inside the test's transaction.
    statements = [q for q in queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]
    assert len(statements) == 3
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


def test_a_resumed_attempt_deletes_what_came_after_its_checkpoint(run, clock, checkpoint):
    first = _reporter(run, clock)
    for i in range(1, 11):
        first.on_iteration(i, _metrics(i))
        if i in (4, 8):
            first.on_validation(i, _eval_result(accuracy=i / 10))
    first.on_checkpoint(5, checkpoint)
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


def test_a_checkpoint_is_recorded_only_after_its_points_are_stored(run, clock, checkpoint):
    reporter = _reporter(run, clock)
    reporter.on_start({"start_iteration": 0, "total_iterations": 10})
    for i in range(1, 5):
        reporter.on_iteration(i, _metrics(i))
    assert MetricPoint.objects.filter(run=run).count() == 0
    reporter.on_checkpoint(4, checkpoint)
    assert list(_points(run)) == [1, 2, 3, 4]
    run.refresh_from_db()
    assert run.checkpoint_iteration == 4
    assert run.checkpoint_file.name == run_files.checkpoint_name(run.pk, 1, 4)
    with default_storage.open(run.checkpoint_file.name) as fh:
        assert fh.read() == b"weights"


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
    # The points stayed in the buffer: the next checkpoint once the retry is due stores them.
    assert reporter.before_checkpoint(4) is False  # backing off: not even tried
    clock.now += 0.5
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


# -- fencing: an attempt that lost its run writes nothing -------------------------------------
def _lose_and_reclaim(run: Run) -> Run:
    """The supervisor declares the run lost and requeues it, and another worker claims it."""
    Run.objects.filter(pk=run.pk).update(status=Run.Status.QUEUED)
    return lifecycle.claim_run(run.pk, worker="w2", device="cpu")


def test_a_woken_attempt_writes_no_points_after_its_run_was_claimed_again(run, clock):
    paused = _reporter(run, clock)
    paused.on_start({"start_iteration": 0, "total_iterations": 100})
    for i in range(1, 4):
        paused.on_iteration(i, _metrics(i))
    paused.flush()
    _lose_and_reclaim(run)
    for i in range(4, 9):  # it wakes up and trains on
        paused.on_iteration(i, _metrics(i))
    paused.on_validation(8, _eval_result())
    assert paused.flush() is False
    assert paused.stop_reason == "lost"
    assert list(_points(run)) == [1, 2, 3]
    assert not Evaluation.objects.filter(run=run).exists()


def test_a_woken_attempt_writes_no_checkpoint(run, clock, checkpoint):
    paused = _reporter(run, clock)
    paused.on_start({"start_iteration": 0, "total_iterations": 100})
    paused.on_iteration(1, _metrics(1))
    paused.on_checkpoint(1, checkpoint)
    newer = _lose_and_reclaim(run)
    Run.objects.filter(pk=run.pk).update(checkpoint_iteration=80, checkpoint_file="newer.pt")

    paused.on_iteration(2, _metrics(2))
    assert paused.before_checkpoint(2) is False  # metatrain then writes no file at all
    paused.on_checkpoint(2, checkpoint)  # and had it written one, it would not count
    newer.refresh_from_db()
    assert (newer.checkpoint_iteration, newer.checkpoint_file.name) == (80, "newer.pt")
    assert not default_storage.exists(run_files.checkpoint_name(run.pk, 1, 2))


def test_an_upload_that_loses_the_race_is_deleted_and_never_pointed_to(run, clock, checkpoint):
    """The run is claimed again between the fence check of the points and the checkpoint's
    record: the file reached storage under attempt 1's name, and is removed."""
    reporter = _reporter(run, clock)
    reporter.on_start({"start_iteration": 0, "total_iterations": 10})
    original = run_files.upload

    def upload_then_lose(source, name, storage=None):
        stored = original(source, name, storage)
        _lose_and_reclaim(run)
        return stored

    run_files.upload = upload_then_lose
    try:
        reporter.on_checkpoint(3, checkpoint)
    finally:
        run_files.upload = original
    assert reporter.stop_reason == "lost"
    assert not default_storage.exists(run_files.checkpoint_name(run.pk, 1, 3))
    assert Run.objects.get(pk=run.pk).checkpoint_file.name == ""


def test_a_new_checkpoint_replaces_the_older_ones_but_never_a_later_attempts(
    run, clock, checkpoint, tmp_path
):
    later = run_files.checkpoint_name(run.pk, 2, 50)  # a later attempt's (this one lost)
    default_storage.save(later, ContentFile(b"later"))
    reporter = _reporter(run, clock)
    reporter.on_start({"start_iteration": 0, "total_iterations": 10})
    reporter.on_checkpoint(2, checkpoint)
    reporter.on_checkpoint(4, checkpoint)
    assert sorted(run_files.stored_files(run.pk)) == sorted(
        [run_files.checkpoint_name(run.pk, 1, 4), later]
    )


# -- evaluations: buffered like points, keyed like points --------------------------------------
def test_a_validation_repeated_at_the_same_iteration_replaces_its_row(run, clock):
    reporter = _reporter(run, clock)
    reporter.on_validation(50, _eval_result(accuracy=0.5, split="test"))
    reporter.on_validation(50, _eval_result(accuracy=0.7, split="test"))
    rows = list(Evaluation.objects.filter(run=run).values_list("split", "iteration", "accuracy"))
    assert rows == [("test", 50, 0.7)]


def test_a_resume_forgets_validations_on_the_test_split_after_its_checkpoint(run, clock):
    """Every Omniglot preset validates on the test classes (validation_classes=0): killed after
    the validation at 50, resumed from the checkpoint at 0, the validation at 50 is run again
    and must not give a second row."""
    first = _reporter(run, clock)
    first.on_validation(50, _eval_result(split="test"))
    resumed = _reporter(run, clock)
    resumed.on_start({"start_iteration": 0, "total_iterations": 200})
    assert not Evaluation.objects.filter(run=run).exists()
    resumed.on_validation(50, _eval_result(split="test"))
    assert Evaluation.objects.filter(run=run, split="test", iteration=50).count() == 1


def _refuse_everything(execute, sql, params, many, context):
    raise OperationalError("connection refused")


@pytest.mark.django_db(transaction=True)  # the reporter closes the failed connection
def test_evaluations_made_during_an_outage_are_stored_when_it_ends(run, clock):
    reporter = _reporter(run, clock)
    reporter.on_start({"start_iteration": 0, "total_iterations": 100})
    with connection.execute_wrapper(_refuse_everything):
        for i in range(1, 21):
            clock.now += 1
            reporter.on_iteration(i, _metrics(i))
            if i % 10 == 0:
                reporter.on_validation(i, _eval_result(accuracy=i / 100))
            reporter.should_stop()
    clock.now += 60
    reporter.on_iteration(21, _metrics(21))
    assert list(
        Evaluation.objects.filter(run=run).order_by("iteration").values_list("iteration", flat=True)
    ) == [10, 20]
    assert list(_points(run)) == list(range(1, 22))
    assert list(_points(run, "validation_accuracy")) == [10, 20]


@pytest.mark.django_db(transaction=True)
def test_during_an_outage_it_backs_off_instead_of_hammering_the_server(run, clock, caplog):
    reporter = _reporter(run, clock, heartbeat_seconds=0.01, cancel_poll_seconds=0.01)
    tries = []

    def refuse(execute, sql, params, many, context):
        tries.append(clock.now)
        raise OperationalError("connection refused")

    with connection.execute_wrapper(refuse):
        for i in range(1, 3001):  # 30 s of training, a call every 10 ms
            clock.now += 0.01
            reporter.on_iteration(i, _metrics(i))
            reporter.should_stop()
    # Waits of 0.5, 1, 2, 4, 8, 16 s between tries (each try: one reconnect and retry).
    assert len(tries) <= 16
    warnings = [r for r in caplog.records if "database unreachable" in r.getMessage()]
    assert len(warnings) == 1
    assert reporter.stop_reason is None  # an outage alone does not stop a run


# -- the heartbeat means progress ---------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_keep_alive_stops_stamping_once_the_loop_reports_progress(run):
    """After the first progress report only progress stamps the heartbeat: a loop that then
    hangs (its task workers stopped) goes stale although its process is alive."""
    reporter = DbReporter(run, 1, heartbeat_seconds=0.05)
    with reporter.keep_alive(max_silence_seconds=30):
        time.sleep(0.2)
        reporter.heartbeat()  # the first evaluation task finished
        time.sleep(0.2)
        Run.objects.filter(pk=run.pk).update(heartbeat_at=None)
        time.sleep(0.3)  # hung
        assert Run.objects.get(pk=run.pk).heartbeat_at is None


# -- the final evaluation as its own phase ----------------------------------------------------
def _evaluate_tasks(reporter: DbReporter, clock: FakeClock, tasks: int, seconds: float) -> None:
    """What metatrain's evaluation loop does per task: poll should_stop, work, heartbeat."""
    for _ in range(tasks):
        reporter.should_stop()
        clock.now += seconds
        reporter.heartbeat()


def test_the_final_evaluation_is_written_as_its_own_phase_with_progress_and_rate(run, clock):
    reporter = _reporter(run, clock, heartbeat_seconds=1)
    reporter.on_start({"start_iteration": 0, "total_iterations": 10})
    reporter.begin_evaluation(100)
    run.refresh_from_db()
    assert (run.phase, run.eval_tasks_done, run.eval_tasks_total) == ("evaluating", 0, 100)

    _evaluate_tasks(reporter, clock, 41, 0.25)  # 4 tasks a second
    run.refresh_from_db()
    assert 36 <= run.eval_tasks_done <= 40
    assert run.eval_tasks_per_second == pytest.approx(4.0, rel=0.1)
    assert run.eval_eta_seconds == pytest.approx((100 - run.eval_tasks_done) / 4.0, rel=0.1)


def test_a_new_attempt_starts_in_the_training_phase_again(run, clock):
    reporter = _reporter(run, clock)
    reporter.on_start({"start_iteration": 0, "total_iterations": 10})
    reporter.begin_evaluation(50)
    Run.objects.filter(pk=run.pk).update(eval_tasks_done=20)

    _reporter(run, clock).on_start({"start_iteration": 10, "total_iterations": 10})

    run.refresh_from_db()
    assert (run.phase, run.eval_tasks_done, run.eval_tasks_total) == ("training", 0, 0)


def test_a_woken_attempt_writes_no_evaluation_progress(run, clock):
    paused = _reporter(run, clock, heartbeat_seconds=1)
    paused.on_start({"start_iteration": 0, "total_iterations": 10})
    _lose_and_reclaim(run)

    paused.begin_evaluation(100)
    _evaluate_tasks(paused, clock, 10, 0.5)

    run.refresh_from_db()
    assert (run.phase, run.eval_tasks_total, run.attempts) == ("training", 0, 2)
    assert paused.stop_reason == "lost"


def _in_another_session(work):
    """`work()` on a connection of its own, as another process (the supervisor) would."""
    result = []
    thread = threading.Thread(target=lambda: result.append(_closing(work)))
    thread.start()
    thread.join(30)
    return result[0]


def _closing(work):
    try:
        return work()
    finally:
        connections.close_all()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a PostgreSQL session setting")
@pytest.mark.django_db(transaction=True)  # the reporter's session is ended and reopened
def test_a_worker_frozen_mid_write_stops_as_lost_once_the_server_ended_its_session(
    run, clock, settings
):
    """Frozen (SIGSTOP) between locking its run and writing its points: the server ends the
    idle transaction, the supervisor can then declare the run lost, and the woken worker
    reconnects, finds the run gone and writes nothing, rather than failing the run."""
    settings.RUN_LOST_AFTER_SECONDS = 60
    reporter = _reporter(run, clock)
    reporter.on_start({"start_iteration": 0, "total_iterations": 10})
    for i in range(1, 5):
        reporter.on_iteration(i, _metrics(i))
    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=120))
    with connection.cursor() as cursor:
        cursor.execute("SET idle_in_transaction_session_timeout = 300")
    declared_lost = []

    def freeze_before_the_points(execute, sql, params, many, context):
        if "INSERT" in sql and "metricpoint" in sql and not declared_lost:
            time.sleep(1)
            declared_lost.append(_in_another_session(lifecycle.mark_stale_runs_lost))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(freeze_before_the_points):
        assert reporter.flush() is False
    assert declared_lost == [[run.pk]]
    assert reporter.stop_reason == STOP_LOST
    assert _points(run) == {}
    assert Run.objects.get(pk=run.pk).status == Run.Status.LOST
