"""GET /api/runs/{id}/metrics of a stopped run: computed once, then sent as kept."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from webapp.experiments.models import MetricPoint, SeriesSummary


@pytest.fixture
def stopped(owner, make_run):
    run = make_run(owner, status="succeeded", attempts=1)
    MetricPoint.objects.bulk_create(
        [
            MetricPoint(run=run, name=name, step=s, value=1 / (s + 2))
            for name in ("loss", "accuracy")
            for s in range(1, 301)
        ]
    )
    return run


def test_a_kept_series_is_sent_as_it_was_computed(api, stopped):
    url = f"/api/runs/{stopped.pk}/metrics?max_points=50"
    computed = api.get(url)
    assert SeriesSummary.objects.filter(run=stopped).count() == 2

    with CaptureQueriesContext(connection) as queries:
        kept = api.get(url)

    assert kept.status_code == 200 and kept["Content-Type"] == "application/json"
    assert kept.json() == computed.json()
    assert kept.json()["series"]["loss"]["downsampled"]
    points_read = [q for q in queries if "experiments_metricpoint" in q["sql"]]
    assert len(points_read) == 1  # the names alone; no bucketing


def test_a_subset_and_an_unknown_name_are_answered_too(api, stopped):
    url = f"/api/runs/{stopped.pk}/metrics?max_points=50"
    api.get(url)

    subset = api.get(url + "&names=accuracy").json()
    unknown = api.get(url + "&names=loss,nope").json()

    assert list(subset["series"]) == ["accuracy"] and subset["names"] == ["accuracy", "loss"]
    assert unknown["series"]["nope"]["steps"] == []
    assert unknown["series"]["loss"] == api.get(url).json()["series"]["loss"]
