"""/api/sweeps: create (checked like the form), list, configurations with aggregates, runs,
cancel."""

from __future__ import annotations

from webapp.experiments.models import Run, Sweep

from ..conftest import SMALL_CONFIG

URL = "/api/sweeps"
VALID = {
    "name": "api sweep",
    "overrides": SMALL_CONFIG,
    "space": {"inner_lr": {"values": [0.001, 0.01]}},
    "method": "grid",
    "seeds": [0, 1],
    "parallel": 2,
}


def test_it_creates_a_sweep_and_queues_its_first_configurations(post_json, api):
    response = post_json(api, URL, VALID)
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["trials"], body["progress"]["queued"], body["progress"]["planned_runs"]) == (
        2,
        4,
        4,
    )
    assert body["status"] == "active" and body["finished"] is False


def test_an_invalid_point_is_a_422_on_its_space_field(post_json, api):
    response = post_json(api, URL, {**VALID, "space": {"inner_lr": {"values": [0.1, -2]}}})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["field"] == "space.inner_lr" and "inner_lr = -2" in error["message"]
    assert not Sweep.objects.exists()


def test_more_runs_than_the_limit_is_refused(post_json, api, settings):
    settings.SWEEP_MAX_RUNS = 3
    response = post_json(api, URL, VALID)
    assert response.status_code == 422
    assert "SWEEP_MAX_RUNS" in response.json()["detail"][0]["message"]


def test_configurations_carry_mean_and_ci_across_seeds_best_first(post_json, api):
    sweep_id = post_json(api, URL, VALID).json()["id"]
    low, high = Sweep.objects.get(pk=sweep_id).experiments.order_by("id")
    for experiment, accuracies in ((low, (0.5, 0.5)), (high, (0.7, 0.9))):
        for run, acc in zip(experiment.runs.order_by("seed"), accuracies, strict=True):
            Run.objects.filter(pk=run.pk).update(status="succeeded", test_accuracy=acc)

    body = api.get(f"{URL}/{sweep_id}/configurations").json()

    first, second = body["items"]
    assert (first["experiment_id"], first["best"], first["mean"]) == (high.pk, True, 0.8)
    assert first["ci95"] == round(12.7062 * 0.1414214 / 2**0.5, 6)
    assert (second["mean"], second["ci95"], second["seeds"]) == (0.5, 0.0, 2)
    assert "Student" in body["ci_method"]
    runs = api.get(f"{URL}/{sweep_id}/runs").json()
    assert runs["count"] == 4
    assert api.get(URL, {"owner": "me"}).json()["count"] == 1


def test_only_the_owner_cancels_and_queued_runs_end(post_json, api, stranger_api):
    sweep_id = post_json(api, URL, VALID).json()["id"]
    assert stranger_api.post(f"{URL}/{sweep_id}/cancel").status_code == 403
    body = api.post(f"{URL}/{sweep_id}/cancel").json()
    assert (body["cancelled"], body["stopping"]) == (4, 0)
    assert body["sweep"]["status"] == "cancelled" and body["sweep"]["finished"] is True
    assert api.get(f"{URL}/999999").status_code == 404
