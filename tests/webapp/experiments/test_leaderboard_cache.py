"""The leaderboard kept per process: built once, built again as soon as the ranked runs change."""

from __future__ import annotations

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from webapp.experiments import leaderboard_cache
from webapp.experiments.leaderboard import Benchmark, boards
from webapp.experiments.models import Run

OMNI_5_1_T = Benchmark("omniglot", "paper", 5, 1, True)


def _accuracies() -> list[float]:
    board = next(b for b in boards() if b.benchmark == OMNI_5_1_T)
    return [r.accuracy for r in board.rows if not r.is_reference]


def _succeeded(make_run, owner, acc, inner_iters):
    return make_run(
        owner,
        test_accuracy=acc,
        test_ci95=0.01,
        test_tasks=1000,
        finished_at=timezone.now(),
        config={"inner_iters": inner_iters},
    )


def test_a_kept_board_costs_one_query(owner, make_run):
    _succeeded(make_run, owner, 0.9, 1)
    boards()

    with CaptureQueriesContext(connection) as queries:
        boards()

    assert len(queries) == 1  # the fingerprint


def test_a_run_that_succeeds_shows_at_once(owner, make_run):
    _succeeded(make_run, owner, 0.9, 1)
    assert _accuracies() == [0.9]

    _succeeded(make_run, owner, 0.95, 2)

    assert _accuracies() == [0.95, 0.9]


def test_a_deleted_or_re_evaluated_run_shows_at_once(owner, make_run):
    first = _succeeded(make_run, owner, 0.9, 1)
    second = _succeeded(make_run, owner, 0.8, 2)
    assert _accuracies() == [0.9, 0.8]

    Run.objects.filter(pk=second.pk).update(test_accuracy=0.97)  # evaluated again
    assert _accuracies() == [0.97, 0.9]

    first.delete()
    assert _accuracies() == [0.97]


def test_nothing_is_kept_when_the_setting_is_zero(owner, make_run, settings):
    settings.LEADERBOARD_CACHE_SECONDS = 0
    _succeeded(make_run, owner, 0.9, 1)
    boards()

    with CaptureQueriesContext(connection) as queries:
        boards()

    assert len(queries) > 1
    leaderboard_cache.forget()


def test_within_the_recheck_time_a_kept_board_costs_no_query(
    owner, make_run, settings, monkeypatch
):
    settings.LEADERBOARD_RECHECK_MS = 1000
    clock = [1000.0]
    monkeypatch.setattr(leaderboard_cache.time, "monotonic", lambda: clock[0])
    _succeeded(make_run, owner, 0.9, 1)
    assert _accuracies() == [0.9]
    _succeeded(make_run, owner, 0.95, 2)

    clock[0] += 0.5
    with CaptureQueriesContext(connection) as queries:
        within = _accuracies()
    clock[0] += 0.6  # the last check is now over a second old
    after = _accuracies()

    assert len(queries) == 0 and within == [0.9]
    assert after == [0.95, 0.9]
