"""The experiment page: the final accuracy as mean ± CI across seeds (method stated), and
the curves as a mean over seeds with a min/max band."""

from __future__ import annotations

import pytest

from webapp.experiments.models import MetricPoint, Run
from webapp.experiments.seed_curves import curve

pytestmark = pytest.mark.django_db


def _experiment_with_seeds(owner, make_run, accuracies):
    runs, experiment = [], None
    for seed, acc in enumerate(accuracies):
        run = make_run(owner, seed=seed, experiment=experiment, test_accuracy=acc, iteration=10)
        experiment = run.experiment
        runs.append(run)
    return experiment, runs


def test_the_final_accuracy_is_a_mean_with_a_students_t_ci_across_seeds(client, owner, make_run):
    experiment, _ = _experiment_with_seeds(owner, make_run, [0.90, 0.92, 0.97])
    client.force_login(owner)
    body = client.get(experiment.get_absolute_url()).content.decode()
    final = body.split('id="experiment-final"')[1].split("</dd>")[0]
    # mean 0.93, s = 0.036056, t(0.975, 2) = 4.3027: ± 4.3027 * s / sqrt(3) = 8.96 %.
    assert "93.00 %" in final and "± 8.96 %" in final
    assert "Student" in final and "3 seeds" in final


def test_a_single_seed_says_it_has_no_interval(client, owner, make_run):
    experiment, _ = _experiment_with_seeds(owner, make_run, [0.9])
    client.force_login(owner)
    final = client.get(experiment.get_absolute_url()).content.decode()
    final = final.split('id="experiment-final"')[1].split("</dd>")[0]
    assert "90.00 %" in final and "±" not in final and "no interval" in final


def test_curves_are_the_mean_over_seeds_with_a_min_max_band(client, owner, make_run):
    experiment, runs = _experiment_with_seeds(owner, make_run, [0.9, 0.8])
    for run, offset in zip(runs, (0.0, 0.2), strict=True):
        MetricPoint.objects.bulk_create(
            MetricPoint(run=run, name="inner_loss", step=s, value=1.0 + offset - s / 100)
            for s in range(10)
        )
    client.force_login(owner)
    response = client.get(experiment.get_absolute_url())
    (c,) = response.context["curves"]
    assert c["steps"] == list(range(10))
    assert c["mean"][0] == pytest.approx(1.1) and c["low"][0] == 1.0 and c["high"][0] == 1.2
    assert c["seeds"] == [2] * 10
    assert "min/max over seeds" in response.content.decode()


def test_a_long_series_is_bucketed_by_the_database(owner, make_run):
    run = make_run(owner, status=Run.Status.RUNNING)
    MetricPoint.objects.bulk_create(
        MetricPoint(run=run, name="inner_loss", step=s, value=float(s)) for s in range(1000)
    )
    c = curve([run.pk], "inner_loss", max_points=100)
    assert len(c["steps"]) == 100 and c["steps"][-1] == 999
    assert c["low"][0] == 0.0 and c["high"][0] == 9.0 and c["mean"][0] == pytest.approx(4.5)
