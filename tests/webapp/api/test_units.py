"""Numbers leave the API without float32 noise: accuracies and CI half-widths rounded to 6
decimal places, other metric values to 7 significant digits; and the OpenAPI description is
written for API users, not a code docstring."""

from __future__ import annotations

import pytest

from webapp.experiments.models import Evaluation, MetricPoint
from webapp.experiments.presentation import round_fraction, round_metric

NOISY = 0.6710000126063824  # float32(0.671) read back as a double


@pytest.mark.parametrize(
    ("value", "expected"),
    [(NOISY, 0.671), (0.95390000000001, 0.9539), (1.0, 1.0), (None, None), (0.0000004, 0.0)],
)
def test_fractions_keep_six_decimal_places(value, expected):
    assert round_fraction(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(NOISY, 0.671), (1.2345678912e-8, 1.234568e-8), (123456789.0, 123456800.0), (0.0, 0.0)],
)
def test_other_metrics_keep_seven_significant_digits(value, expected):
    assert round_metric(value) == expected


def test_run_evaluation_and_leaderboard_accuracies_are_rounded(api, owner, make_run):
    run = make_run(owner, test_accuracy=NOISY, test_ci95=0.0123456789, test_tasks=100)
    Evaluation.objects.create(run=run, split="test", accuracy=NOISY, ci95=0.0123456789, tasks=10)

    detail = api.get(f"/api/runs/{run.pk}").json()
    listed = api.get("/api/runs").json()["items"][0]
    (evaluation,) = api.get(f"/api/runs/{run.pk}/evaluations").json()
    rows = api.get("/api/leaderboard").json()["boards"][0]["rows"]
    (row,) = [r["runs"][0] for r in rows if r["runs"] and r["runs"][0]["run_id"] == run.pk]

    for item in (detail, listed):
        assert (item["test_accuracy"], item["test_ci95"]) == (0.671, 0.012346)
    assert (evaluation["accuracy"], evaluation["ci95"]) == (0.671, 0.012346)
    assert (row["accuracy"], row["ci95"]) == (0.671, 0.012346)


def test_metric_series_carry_no_float32_noise(api, owner, make_run):
    run = make_run(owner)
    MetricPoint.objects.bulk_create(
        MetricPoint(run=run, name="val_accuracy", step=step, value=NOISY) for step in (1, 2)
    )

    series = api.get(f"/api/runs/{run.pk}/metrics").json()["series"]["val_accuracy"]

    assert series["values"] == series["min"] == series["max"] == [0.671, 0.671]


def test_the_runs_page_feed_rounds_accuracies_too(client, owner, make_run):
    run = make_run(owner, test_accuracy=NOISY)
    client.force_login(owner)

    state = client.get(f"/runs/{run.pk}/metrics.json").json()["run"]

    assert state["test_accuracy"] == 0.671


def test_the_openapi_description_is_written_for_api_users(client):
    description = client.get("/api/openapi.json").json()["info"]["description"]

    assert not description.startswith("The NinjaAPI instance")
    for topic in ("Authentication", "Errors", "Units", "Paths", "Retry-After", "`q`"):
        assert topic in description, topic
