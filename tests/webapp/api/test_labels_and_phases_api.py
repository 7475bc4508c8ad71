"""The API's view of a run's final evaluation phase, evaluate now, sine losses, and the names,
notes and tags of runs and experiments (PATCH, and the `tag` and `q` filters)."""

from __future__ import annotations

import json

from django.core.files.base import ContentFile

from webapp.experiments.models import Run


def _patch(client, url, data):
    return client.patch(url, data=json.dumps(data), content_type="application/json")


def test_a_run_in_its_final_evaluation_reports_phase_progress_rate_and_eta(api, owner, make_run):
    run = make_run(
        owner,
        status=Run.Status.RUNNING,
        phase=Run.Phase.EVALUATING,
        eval_tasks_done=400,
        eval_tasks_total=1000,
        eval_tasks_per_second=20.0,
    )

    body = api.get(f"/api/runs/{run.pk}").json()

    assert body["phase"] == "evaluating"
    assert (body["eval_tasks_done"], body["eval_tasks_total"]) == (400, 1000)
    assert body["eval_tasks_per_second"] == 20.0 and body["eval_eta_seconds"] == 30.0


def test_a_sine_run_reports_its_losses_and_a_finished_one_its_speed(api, owner, make_run):
    run = make_run(
        owner,
        dataset="sine",
        test_loss_before=4.39,
        test_loss_after=0.17,
        seconds_per_iteration=0.5,
    )

    body = api.get("/api/runs").json()["items"][0]

    assert body["id"] == run.pk
    assert (body["test_loss_before"], body["test_loss_after"]) == (4.39, 0.17)
    assert body["iterations_per_second"] == 2.0 and body["test_accuracy"] is None


def test_the_owner_labels_a_run_and_filters_by_its_tag(api, owner, make_run):
    run = make_run(owner)
    other = make_run(owner)

    response = _patch(api, f"/api/runs/{run.pk}", {"name": "best", "tags": ["Good", "lr-sweep"]})

    assert response.status_code == 200
    assert response.json()["name"] == "best" and response.json()["tags"] == ["good", "lr-sweep"]
    listed = api.get("/api/runs", {"tag": "LR-sweep"}).json()["items"]
    assert [r["id"] for r in listed] == [run.pk]
    assert other.pk not in [r["id"] for r in api.get("/api/runs", {"tag": "good"}).json()["items"]]


def test_labels_are_refused_field_by_field_and_for_strangers(api, stranger_api, owner, make_run):
    run = make_run(owner)

    bad = _patch(api, f"/api/runs/{run.pk}", {"name": "x" * 201, "notes": "fine"})
    unknown = _patch(api, f"/api/runs/{run.pk}", {"colour": "red"})
    forbidden = _patch(stranger_api, f"/api/runs/{run.pk}", {"name": "mine"})

    assert bad.status_code == 422
    assert bad.json()["detail"] == [{"field": "name", "message": "At most 200 characters."}]
    assert unknown.status_code == 422
    assert forbidden.status_code == 403
    run.refresh_from_db()
    assert (run.name, run.notes) == ("", "")


def test_an_experiment_is_renamed_tagged_and_found_by_tag_and_text(api, owner, make_run):
    experiment = make_run(owner, name="first").experiment
    make_run(owner, name="second")

    response = _patch(
        api,
        f"/api/experiments/{experiment.pk}",
        {"name": "renamed", "notes": "the good one", "tags": ["paper"]},
    )
    empty = _patch(api, f"/api/experiments/{experiment.pk}", {"name": "  "})

    assert response.status_code == 200 and response.json()["name"] == "renamed"
    assert empty.status_code == 422
    by_tag = api.get("/api/experiments", {"tag": "paper"}).json()
    by_text = api.get("/api/experiments", {"q": "good one"}).json()
    assert (
        [e["id"] for e in by_tag["items"]] == [experiment.pk] == [e["id"] for e in by_text["items"]]
    )
    assert by_tag["items"][0]["tags"] == ["paper"]


def test_evaluate_now_queues_a_cancelled_run_with_a_checkpoint_and_refuses_others(
    api, owner, make_run, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path / "media"
    run = make_run(owner, status=Run.Status.CANCELLED, checkpoint_iteration=30)
    run.checkpoint_file.save("c.pt", ContentFile(b"x"), save=True)
    done = make_run(owner)

    queued = api.post(f"/api/runs/{run.pk}/evaluate")
    refused = api.post(f"/api/runs/{done.pk}/evaluate")

    assert queued.status_code == 200
    assert queued.json()["status"] == "queued"
    assert Run.objects.get(pk=run.pk).evaluate_only is True
    assert (
        refused.status_code == 409 and "only a cancelled or failed run" in refused.json()["detail"]
    )
