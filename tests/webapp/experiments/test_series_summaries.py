"""A stopped run's bucketed series are kept (SeriesSummary) and forgotten when its points change."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from webapp.experiments import lifecycle
from webapp.experiments.metrics_series import series
from webapp.experiments.models import MetricPoint, Run, SeriesSummary
from webapp.experiments.reporter import DbReporter

MAX_POINTS = 4


def add_points(run, name, steps, value=lambda s: float(s)):
    MetricPoint.objects.bulk_create(
        [MetricPoint(run=run, name=name, step=s, value=value(s)) for s in steps]
    )


@pytest.fixture
def stopped(owner, make_run):
    run = make_run(owner, status=Run.Status.SUCCEEDED, attempts=1)
    add_points(run, "loss", range(1, 101))
    add_points(run, "accuracy", range(1, 101), lambda s: s / 100)
    return run


def test_it_serves_a_stopped_runs_series_from_what_it_kept(stopped):
    first = series(stopped, max_points=MAX_POINTS)
    assert SeriesSummary.objects.filter(run=stopped, max_points=MAX_POINTS).count() == 2

    with CaptureQueriesContext(connection) as queries:
        again = series(stopped, names=["accuracy", "loss"], max_points=MAX_POINTS)

    assert again == {"accuracy": first["accuracy"], "loss": first["loss"]}
    assert first["loss"]["downsampled"] and first["loss"]["last_step"] == 100
    assert len(queries) == 1  # the summaries alone, no read of the points


def test_it_keeps_each_resolution_apart(stopped):
    coarse = series(stopped, max_points=MAX_POINTS)
    fine = series(stopped, max_points=200)

    assert len(coarse["loss"]["steps"]) <= MAX_POINTS
    assert fine["loss"]["steps"] == list(range(1, 101))
    assert series(stopped, max_points=MAX_POINTS) == coarse


def test_it_keeps_nothing_for_a_running_run(owner, make_run):
    run = make_run(owner, status=Run.Status.RUNNING, attempts=1)
    add_points(run, "loss", range(1, 101))

    series(run, max_points=MAX_POINTS)

    assert not SeriesSummary.objects.exists()


def test_it_keeps_neither_windows_tails_nor_unknown_names(stopped):
    series(stopped, max_points=MAX_POINTS, from_step=10, to_step=50)
    series(stopped, after_step=90)
    assert series(stopped, names=["nope"], max_points=MAX_POINTS)["nope"]["steps"] == []

    assert not SeriesSummary.objects.exists()


def test_it_ignores_a_summary_of_an_earlier_attempt(stopped):
    """A request that bucketed the old points and stored them after a resume began is harmless."""
    SeriesSummary.objects.create(
        run=stopped, attempt=0, name="loss", max_points=MAX_POINTS, body='{"stale": true}'
    )

    assert "stale" not in series(stopped, names=["loss"], max_points=MAX_POINTS)["loss"]


def test_a_resumed_run_that_rewrites_steps_forgets_what_was_kept(owner, make_experiment):
    queued = make_experiment(owner).runs.get()
    run = lifecycle.claim_run(queued.pk, worker="w1", device="cpu")
    first = DbReporter(run, run.attempts)
    for i in range(1, 11):
        first.add_point("loss", i, 1.0)
    first.flush()
    Run.objects.filter(pk=run.pk).update(status=Run.Status.LOST, checkpoint_iteration=5)
    run.refresh_from_db()
    assert series(run, max_points=MAX_POINTS)["loss"]["max"][-1] == 1.0
    assert SeriesSummary.objects.filter(run=run).exists()

    Run.objects.filter(pk=run.pk).update(status=Run.Status.QUEUED)
    resumed_run = lifecycle.claim_run(run.pk, worker="w2", device="cpu")
    resumed = DbReporter(resumed_run, resumed_run.attempts)
    resumed.on_start({"start_iteration": 5, "total_iterations": 10})
    assert not SeriesSummary.objects.filter(run=run).exists()
    for i in range(6, 11):
        resumed.add_point("loss", i, 2.0)
    resumed.flush()
    Run.objects.filter(pk=run.pk).update(status=Run.Status.SUCCEEDED)
    resumed_run.refresh_from_db()

    after = series(resumed_run, max_points=MAX_POINTS)["loss"]
    assert after["values"][-1] == 2.0 and after["max"][-1] == 2.0
    assert after == series(resumed_run, max_points=MAX_POINTS)["loss"]  # now kept again
