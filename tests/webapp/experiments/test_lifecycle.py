"""The run state machine's transitions (webapp/experiments/lifecycle.py), on the real database."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import psycopg
import pytest
from django.conf import settings
from django.db import connection, connections
from django.utils import timezone

from webapp.experiments import lifecycle, metrics_series, series_summaries, services
from webapp.experiments.models import MetricPoint, Run, RunAttempt, Worker


@pytest.fixture
def queued_run(owner, make_experiment) -> Run:
    return make_experiment(owner).runs.get()


@pytest.fixture
def limits(settings):
    settings.RUN_LOST_AFTER_SECONDS = 60
    settings.RUN_MAX_ATTEMPTS = 2
    return settings


def _claim(run: Run, worker: str = "w1") -> Run:
    claimed = lifecycle.claim_run(run.pk, worker=worker, device="CPU (1 threads)")
    assert claimed is not None
    return claimed


def _go_stale(run: Run, seconds: float = 120) -> None:
    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=seconds))


def test_it_claims_a_queued_run_and_opens_an_attempt(queued_run):
    run = _claim(queued_run)
    assert run.status == Run.Status.RUNNING
    assert run.attempts == 1
    assert run.worker == "w1"
    assert run.started_at is not None and run.heartbeat_at is not None
    attempt = RunAttempt.objects.get(run=run)
    assert (attempt.number, attempt.worker, attempt.outcome) == (1, "w1", "")


def test_a_second_claim_of_the_same_run_loses(queued_run):
    _claim(queued_run, "w1")
    assert lifecycle.claim_run(queued_run.pk, worker="w2", device="") is None
    run = Run.objects.get(pk=queued_run.pk)
    assert (run.worker, run.attempts) == ("w1", 1)
    assert RunAttempt.objects.filter(run=run).count() == 1


def test_it_does_not_claim_a_missing_or_cancelled_run(queued_run):
    assert lifecycle.claim_run(10**9, worker="w1", device="") is None
    services.request_cancel(queued_run)
    assert lifecycle.claim_run(queued_run.pk, worker="w1", device="") is None
    assert Run.objects.get(pk=queued_run.pk).status == Run.Status.CANCELLED


def test_cancelling_a_queued_run_cancels_it_at_once(queued_run):
    run = services.request_cancel(queued_run)
    assert run.status == Run.Status.CANCELLED
    assert run.finished_at is not None


def test_cancelling_a_running_run_only_raises_the_flag(queued_run):
    run = services.request_cancel(_claim(queued_run))
    assert run.status == Run.Status.RUNNING
    assert run.cancel_requested


def test_complete_fail_and_cancel_close_the_attempt(owner, make_experiment):
    runs = list(make_experiment(owner, seeds=[1, 2, 3]).runs.order_by("seed"))
    for run in runs:
        _claim(run)
    assert lifecycle.complete_run(runs[0], 1, test_accuracy=0.9, test_ci95=0.01, test_tasks=10)
    assert lifecycle.fail_run(runs[1], 1, "ValueError: boom")
    assert lifecycle.cancel_run(runs[2], 1, "cancelled at iteration 3")
    expected = [
        (Run.Status.SUCCEEDED, ""),
        (Run.Status.FAILED, "ValueError: boom"),
        (Run.Status.CANCELLED, "cancelled at iteration 3"),
    ]
    for run, (status, reason) in zip(runs, expected, strict=True):
        run.refresh_from_db()
        assert (run.status, run.status_reason) == (status, reason)
        assert run.finished_at is not None
        attempt = RunAttempt.objects.get(run=run)
        assert (attempt.outcome, attempt.reason) == (status, reason)
        assert attempt.ended_at is not None
    assert runs[0].test_accuracy == 0.9


@pytest.mark.parametrize("end", ["complete_run", "fail_run", "cancel_run"])
def test_a_run_that_ends_has_its_charts_kept_at_once(queued_run, end):
    run = _claim(queued_run)
    MetricPoint.objects.bulk_create(
        [MetricPoint(run=run, name=n, step=s, value=s / 7) for n in ("a", "b") for s in range(3000)]
    )
    args = {"fail_run": ("boom",), "cancel_run": ("stopped",)}.get(end, ())

    assert getattr(lifecycle, end)(run, 1, *args)

    kept = series_summaries.load(run, ["a", "b"], metrics_series.DEFAULT_MAX_POINTS)
    assert sorted(kept) == ["a", "b"]
    assert kept["a"]["downsampled"] and kept["a"]["steps"][-1] == 2999
    assert kept == metrics_series.series(run)  # what a chart load now reads


def test_it_marks_a_run_with_a_stale_heartbeat_lost_with_a_reason(queued_run, limits):
    run = _claim(queued_run)
    Run.objects.filter(pk=run.pk).update(iteration=40, checkpoint_iteration=30)
    _go_stale(run, 75)
    assert lifecycle.mark_stale_runs_lost() == [run.pk]
    run.refresh_from_db()
    assert run.status == Run.Status.LOST
    assert "no heartbeat for 75 s (limit 60 s)" in run.status_reason
    assert "w1" in run.status_reason and "iteration 30" in run.status_reason
    assert RunAttempt.objects.get(run=run).outcome == lifecycle.OUTCOME_LOST


def test_it_leaves_a_run_with_a_recent_heartbeat_alone(queued_run, limits):
    run = _claim(queued_run)
    _go_stale(run, 30)
    assert lifecycle.mark_stale_runs_lost() == []
    assert Run.objects.get(pk=run.pk).status == Run.Status.RUNNING


def test_it_judges_a_run_that_never_beat_by_its_start(queued_run, limits):
    run = _claim(queued_run)
    now = timezone.now()
    Run.objects.filter(pk=run.pk).update(heartbeat_at=None, started_at=now - timedelta(seconds=61))
    assert lifecycle.mark_stale_runs_lost(now) == [run.pk]


def test_it_uses_the_time_it_is_given(queued_run, limits):
    run = _claim(queued_run)
    later = timezone.now() + timedelta(seconds=61)
    assert lifecycle.mark_stale_runs_lost(later) == [run.pk]


def test_a_lost_run_is_requeued_for_another_worker(queued_run, limits):
    run = _claim(queued_run)
    Run.objects.filter(pk=run.pk).update(dispatched_at=timezone.now())
    _go_stale(run)
    result = lifecycle.supervise()
    assert result["lost"] == [run.pk] and result["queued"] == [run.pk]
    run.refresh_from_db()
    assert run.status == Run.Status.QUEUED
    assert run.dispatched_at is None  # so the dispatcher sends it again
    assert run.status_reason.startswith("requeued after loss 1 of 2")
    assert lifecycle.claim_run(run.pk, worker="w2", device="").attempts == 2


def test_a_run_lost_max_attempts_times_fails_with_the_reason(queued_run, limits):
    run = queued_run
    for worker in ("w1", "w2"):
        run = _claim(run, worker)
        _go_stale(run)
        lifecycle.supervise()
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert run.status_reason.startswith("failed: lost 2 times")
    assert "RUN_MAX_ATTEMPTS=2" in run.status_reason and "not resumed again" in run.status_reason
    assert "resumes" not in run.status_reason  # it does not: the message says what happened
    assert "w2" in run.status_reason
    assert run.finished_at is not None


def test_a_requeued_run_says_where_it_resumes(queued_run, limits):
    run = _claim(queued_run)
    Run.objects.filter(pk=run.pk).update(iteration=40, checkpoint_iteration=30)
    _go_stale(run)
    lifecycle.supervise()
    run.refresh_from_db()
    assert "resumes from its checkpoint at iteration 30" in run.status_reason


def test_a_run_whose_worker_still_reports_in_is_called_stalled_not_gone(queued_run, limits):
    """The heartbeat means progress: a live worker whose run stopped advancing is stuck."""
    run = _claim(queued_run)
    Worker.objects.create(hostname="w1", last_seen=timezone.now())
    _go_stale(run, 75)
    assert lifecycle.mark_stale_runs_lost() == [run.pk]
    run.refresh_from_db()
    assert run.status_reason.startswith("stalled: no progress for 75 s (limit 60 s)")


def test_a_lost_run_with_a_cancel_request_ends_cancelled(queued_run, limits):
    run = services.request_cancel(_claim(queued_run))
    _go_stale(run)
    result = lifecycle.supervise()
    assert result["cancelled"] == [run.pk]
    assert Run.objects.get(pk=run.pk).status == Run.Status.CANCELLED


def test_a_release_goes_back_to_the_queue_without_using_an_attempt(queued_run, limits):
    run = _claim(queued_run)
    assert lifecycle.release_run(run, 1, "worker shut down at iteration 7; resumes")
    assert run.status == Run.Status.QUEUED and run.worker == "" and run.dispatched_at is None
    assert RunAttempt.objects.get(run=run).outcome == lifecycle.OUTCOME_RELEASED
    assert lifecycle.lost_attempts(run) == 0
    # Released twice and lost once: still below RUN_MAX_ATTEMPTS=2 losses, so requeued.
    run = _claim(run)
    lifecycle.release_run(run, 2)
    run = _claim(run)
    _go_stale(run)
    assert lifecycle.supervise()["queued"] == [run.pk]


def test_an_attempt_that_lost_its_claim_changes_nothing(queued_run, limits):
    first = _claim(queued_run, "w1")
    _go_stale(first)
    lifecycle.supervise()
    second = _claim(first, "w2")
    assert not lifecycle.complete_run(first, 1, test_accuracy=1.0)
    assert not lifecycle.fail_run(first, 1, "late")
    assert not lifecycle.release_run(first, 1)
    run = Run.objects.get(pk=second.pk)
    assert (run.status, run.worker, run.attempts, run.test_accuracy) == (
        Run.Status.RUNNING,
        "w2",
        2,
        None,
    )


def test_a_release_of_a_run_whose_cancel_was_requested_cancels_it(queued_run):
    run = services.request_cancel(_claim(queued_run))
    assert not lifecycle.release_run(run, 1, "worker shut down at iteration 3; resumes")
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED
    assert "worker shut down at iteration 3" in run.status_reason
    assert RunAttempt.objects.get(run=run).outcome == Run.Status.CANCELLED


def test_a_run_whose_worker_went_quiet_with_it_is_called_gone_not_stalled(queued_run, limits):
    """A SIGKILLed worker: its last report came with (or just after) its run's last heartbeat."""
    run = _claim(queued_run)
    _go_stale(run, 75)
    beat = Run.objects.get(pk=run.pk).heartbeat_at
    Worker.objects.create(hostname="w1", last_seen=beat + timedelta(seconds=1))
    assert lifecycle.mark_stale_runs_lost() == [run.pk]
    run.refresh_from_db()
    assert run.status_reason.startswith("no heartbeat for 75 s")


# -- a worker frozen inside a transaction (SIGSTOP, a VM paused, a GC pause) -------------------
# It keeps the run's row locked for as long as it is frozen: the supervisor must go on
# supervising every other run, and the server must end that transaction in bounded time.
on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="row locks: SQLite locks the whole file instead"
)


def _supervise_within(seconds: float) -> dict[str, list[int]]:
    """supervise() in a thread: a test that would block on a lock fails instead of hanging."""
    result: dict = {}

    def work() -> None:
        try:
            result.update(lifecycle.supervise())
        finally:
            connections.close_all()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"supervise() was still blocked after {seconds} s"
    return result


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_run_whose_row_a_frozen_worker_holds_does_not_block_the_supervision_of_others(
    owner, make_experiment, limits, frozen_holder
):
    frozen, other = (_claim(make_experiment(owner, name=n).runs.get()) for n in ("a", "b"))
    _go_stale(frozen)
    _go_stale(other)
    with frozen_holder(frozen):
        assert _supervise_within(10)["lost"] == [other.pk]
        assert Run.objects.get(pk=frozen.pk).status == Run.Status.RUNNING
    # Its lock gone, it is judged by its heartbeat like any run.
    assert _supervise_within(10)["lost"] == [frozen.pk]


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_the_server_ends_a_frozen_transaction_and_its_run_is_then_declared_lost(
    owner, make_experiment, limits, frozen_holder
):
    run = _claim(make_experiment(owner).runs.get())
    _go_stale(run)
    with frozen_holder(run, idle_in_transaction_session_timeout="500") as holder:
        assert _supervise_within(10)["lost"] == []
        time.sleep(1.5)
        assert _supervise_within(10)["lost"] == [run.pk]
        with pytest.raises(psycopg.Error, match="idle-in-transaction timeout"):
            holder.execute("SELECT 1")  # the frozen worker, woken: its session is gone


@on_postgresql
def test_every_site_connection_bounds_idle_transactions_and_lock_waits(db):
    """What the frozen-worker rules rest on: the site's PostgreSQL sessions are opened with
    both limits (webapp/settings.py); an idle transaction by default outlives no run's
    heartbeat limit."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT name, setting, unit FROM pg_settings "
            "WHERE name IN ('idle_in_transaction_session_timeout', 'lock_timeout') ORDER BY name"
        )
        assert cursor.fetchall() == [
            (
                "idle_in_transaction_session_timeout",
                f"{settings.DB_IDLE_IN_TRANSACTION_SECONDS}000",
                "ms",
            ),
            ("lock_timeout", f"{settings.DB_LOCK_TIMEOUT_SECONDS}000", "ms"),
        ]
    assert settings.DB_IDLE_IN_TRANSACTION_SECONDS == settings.RUN_LOST_AFTER_SECONDS
