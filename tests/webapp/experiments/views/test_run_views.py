"""The runs table, a run's live page and metrics feed, cancel, downloads."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from webapp.experiments.models import Evaluation, MetricPoint, Run, RunAttempt, Worker

RUNS = reverse("run-list")


def add_points(run, name, steps, value=lambda s: s / 10):
    MetricPoint.objects.bulk_create(
        MetricPoint(run=run, name=name, step=s, value=value(s)) for s in steps
    )


# --- the runs table ------------------------------------------------------------------------


def test_the_runs_table_needs_a_login(client):
    response = client.get(RUNS)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_everyone_logged_in_sees_every_run(client, owner, stranger, make_run):
    run = make_run(owner, name="owners run")
    client.force_login(stranger)

    response = client.get(RUNS)

    assert [r["id"] for r in response.context["runs"]] == [run.pk]
    assert "owners run" in response.content.decode()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=failed", {"broken"}),
        ("dataset=sine", {"wave"}),
        ("algorithm=fomaml", {"first order"}),
        ("owner=stranger", {"wave"}),
        ("owner=me", {"broken", "first order"}),
        ("q=WAV", {"wave"}),
        ("status=bogus", {"broken", "wave", "first order"}),
    ],
)
def test_the_runs_table_filters(client, owner, stranger, make_run, query, expected):
    make_run(owner, name="broken", status=Run.Status.FAILED)
    make_run(stranger, name="wave", dataset="sine")
    make_run(owner, name="first order", algorithm="fomaml")
    client.force_login(owner)

    response = client.get(f"{RUNS}?{query}")

    assert {r["experiment__name"] for r in response.context["runs"]} == expected


def test_the_runs_table_sorts_by_accuracy_with_unscored_runs_last(client, owner, make_run):
    make_run(owner, name="none", status=Run.Status.QUEUED)
    make_run(owner, name="low", test_accuracy=0.5)
    make_run(owner, name="high", test_accuracy=0.9)
    client.force_login(owner)

    response = client.get(f"{RUNS}?sort=accuracy")

    assert [r["experiment__name"] for r in response.context["runs"]] == ["high", "low", "none"]


def test_the_runs_table_paginates_and_keeps_the_filters(client, owner, make_run):
    for i in range(27):
        make_run(owner, name=f"r{i}", dataset="sine")
    client.force_login(owner)

    first = client.get(f"{RUNS}?dataset=sine")
    second = client.get(f"{RUNS}?dataset=sine&page=2")

    assert len(first.context["runs"]) == 25
    assert len(second.context["runs"]) == 2
    assert "?dataset=sine&amp;page=2" in first.content.decode()


# --- the run page --------------------------------------------------------------------------


def test_the_run_page_shows_status_progress_eta_and_config(client, owner, stranger, make_run):
    run = make_run(
        owner,
        status=Run.Status.RUNNING,
        iteration=250,
        total_iterations=1000,
        seconds_per_iteration=0.5,
        heartbeat_at=timezone.now(),
        worker="celery@box",
        device="cuda:0 (NVIDIA H100)",
    )
    client.force_login(stranger)

    response = client.get(run.get_absolute_url())

    body = response.content.decode()
    assert response.status_code == 200
    assert 'id="run-iteration">250<' in body
    assert "25.0%" in body.replace(" %", "%")
    assert 'id="run-eta">6 min 15 s<' in body  # 750 iterations x 0.5 s
    assert "celery@box" in body and "NVIDIA H100" in body
    assert "meta_iters" in body
    assert 'id="run-unresponsive" class="badge badge-warn"' in body
    assert response.context["state"]["unresponsive"] is False


def test_the_run_page_marks_a_running_run_with_a_stale_heartbeat_unresponsive(
    client, owner, make_run, settings
):
    settings.RUN_HEARTBEAT_SECONDS = 5
    run = make_run(
        owner, status=Run.Status.RUNNING, heartbeat_at=timezone.now() - timedelta(seconds=16)
    )
    client.force_login(owner)

    response = client.get(run.get_absolute_url())

    assert response.context["state"]["unresponsive"] is True
    badge = response.content.decode().split('id="run-unresponsive"')[1].split(">")[0]
    assert "hidden" not in badge


def test_a_fresh_heartbeat_is_not_unresponsive(client, owner, make_run, settings):
    settings.RUN_HEARTBEAT_SECONDS = 5
    run = make_run(
        owner, status=Run.Status.RUNNING, heartbeat_at=timezone.now() - timedelta(seconds=14)
    )
    client.force_login(owner)

    response = client.get(run.get_absolute_url())

    assert response.context["state"]["unresponsive"] is False


def test_the_run_page_shows_errors_attempts_and_evaluations(client, owner, make_run):
    run = make_run(owner, status=Run.Status.FAILED, status_reason="RuntimeError: CUDA OOM")
    RunAttempt.objects.create(run=run, number=1, worker="w1", outcome="failed", reason="oom")
    Evaluation.objects.create(
        run=run, split="validation", iteration=100, accuracy=0.8125, ci95=0.02, tasks=200
    )
    client.force_login(owner)

    body = client.get(run.get_absolute_url()).content.decode()

    assert "RuntimeError: CUDA OOM" in body
    assert "w1" in body
    assert "81.25 %" in body


def test_the_cancel_button_is_only_for_the_owner_of_an_active_run(
    client, owner, stranger, make_run
):
    run = make_run(owner, status=Run.Status.RUNNING)
    cancel_url = reverse("run-cancel", args=[run.pk])

    client.force_login(owner)
    assert cancel_url in client.get(run.get_absolute_url()).content.decode()
    client.force_login(stranger)
    assert cancel_url not in client.get(run.get_absolute_url()).content.decode()


def test_a_missing_run_is_404(client, owner):
    client.force_login(owner)

    assert client.get(reverse("run-detail", args=[12345])).status_code == 404


# --- the metrics feed ----------------------------------------------------------------------


def test_the_metrics_feed_returns_the_series_and_the_runs_state(client, owner, make_run):
    run = make_run(owner, status=Run.Status.RUNNING, iteration=5, total_iterations=10)
    add_points(run, "inner_loss", range(1, 6))
    add_points(run, "validation_accuracy", [5], value=lambda s: 0.5)
    client.force_login(owner)

    data = client.get(reverse("run-metrics", args=[run.pk])).json()

    assert data["series"]["inner_loss"]["steps"] == [1, 2, 3, 4, 5]
    assert data["series"]["inner_loss"]["values"] == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert data["series"]["validation_accuracy"]["values"] == [0.5]
    assert data["run"]["status"] == "running"
    assert data["run"]["progress_percent"] == 50.0
    assert data["run"]["is_final"] is False


def test_the_metrics_feed_sends_only_the_tail_after_a_step(client, owner, make_run):
    run = make_run(owner)
    add_points(run, "inner_loss", range(1, 11))
    client.force_login(owner)

    data = client.get(reverse("run-metrics", args=[run.pk]), {"after_step": 7}).json()

    assert data["series"]["inner_loss"]["steps"] == [8, 9, 10]
    assert data["series"]["inner_loss"]["last_step"] == 10


def test_the_metrics_feed_filters_by_name(client, owner, make_run):
    run = make_run(owner)
    add_points(run, "inner_loss", [1])
    add_points(run, "meta_step_size", [1])
    client.force_login(owner)

    data = client.get(reverse("run-metrics", args=[run.pk]), {"names": "meta_step_size"}).json()

    assert list(data["series"]) == ["meta_step_size"]


def test_the_metrics_feed_rejects_a_bad_after_step(client, owner, make_run):
    run = make_run(owner)
    client.force_login(owner)

    response = client.get(reverse("run-metrics", args=[run.pk]), {"after_step": "x"})

    assert response.status_code == 400
    assert "after_step" in response.json()["error"]


def test_the_metrics_feed_needs_a_login(client, owner, make_run):
    run = make_run(owner)

    response = client.get(reverse("run-metrics", args=[run.pk]))

    assert response.status_code == 302


# --- cancel --------------------------------------------------------------------------------


def test_the_owner_cancels_a_queued_run_at_once(client, owner, make_experiment):
    run = make_experiment(owner).runs.get()
    client.force_login(owner)

    response = client.post(reverse("run-cancel", args=[run.pk]))

    run.refresh_from_db()
    assert response.status_code == 302
    assert run.status == Run.Status.CANCELLED


def test_cancelling_a_running_run_asks_it_to_stop(client, owner, make_run):
    run = make_run(owner, status=Run.Status.RUNNING)
    client.force_login(owner)

    response = client.post(reverse("run-cancel", args=[run.pk]), follow=True)

    run.refresh_from_db()
    assert run.status == Run.Status.RUNNING  # the worker stops it at its next poll
    assert run.cancel_requested is True
    assert "Asked run" in response.content.decode()


def test_staff_may_cancel_anyones_run(client, owner, staff, make_experiment):
    run = make_experiment(owner).runs.get()
    client.force_login(staff)

    client.post(reverse("run-cancel", args=[run.pk]))

    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED


def test_a_stranger_may_not_cancel_a_run(client, owner, stranger, make_experiment):
    run = make_experiment(owner).runs.get()
    client.force_login(stranger)

    response = client.post(reverse("run-cancel", args=[run.pk]))

    run.refresh_from_db()
    assert response.status_code == 403
    assert run.status == Run.Status.QUEUED
    assert run.cancel_requested is False


def test_an_anonymous_cancel_is_sent_to_log_in(client, owner, make_experiment):
    run = make_experiment(owner).runs.get()

    response = client.post(reverse("run-cancel", args=[run.pk]))

    run.refresh_from_db()
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    assert run.status == Run.Status.QUEUED


def test_cancel_only_answers_post_with_a_csrf_token(owner, make_experiment):
    run = make_experiment(owner).runs.get()
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)

    assert client.get(reverse("run-cancel", args=[run.pk])).status_code == 405
    assert client.post(reverse("run-cancel", args=[run.pk])).status_code == 403
    run.refresh_from_db()
    assert run.status == Run.Status.QUEUED


def test_cancelling_a_finished_run_changes_nothing(client, owner, make_run):
    run = make_run(owner, status=Run.Status.SUCCEEDED)
    client.force_login(owner)

    client.post(reverse("run-cancel", args=[run.pk]))

    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED
    assert run.cancel_requested is False


# --- downloads -----------------------------------------------------------------------------


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


def with_artifacts(run):
    run.initialization.save("initialization.safetensors", ContentFile(b"weights"), save=False)
    run.config_file.save("config.json", ContentFile(b'{"model": "sine_mlp"}'), save=False)
    run.save()
    return run


@pytest.mark.parametrize("artifact", ["initialization.safetensors", "config.json"])
@pytest.mark.parametrize("status", [Run.Status.QUEUED, Run.Status.RUNNING, Run.Status.FAILED])
def test_downloads_are_404_before_the_run_succeeds(
    client, owner, make_run, media, artifact, status
):
    run = with_artifacts(make_run(owner, status=status))
    client.force_login(owner)

    response = client.get(reverse("run-download", args=[run.pk, artifact]))

    assert response.status_code == 404


def test_a_succeeded_runs_initialization_downloads_for_anyone_logged_in(
    client, owner, stranger, make_run, media
):
    run = with_artifacts(make_run(owner, status=Run.Status.SUCCEEDED))
    client.force_login(stranger)

    weights = client.get(reverse("run-download", args=[run.pk, "initialization.safetensors"]))
    config = client.get(reverse("run-download", args=[run.pk, "config.json"]))

    assert weights.status_code == 200
    assert b"".join(weights.streaming_content) == b"weights"
    name = f"run-{run.pk}-o5w1s-seed{run.seed}"
    assert f'filename="{name}-initialization.safetensors"' in weights["Content-Disposition"]
    assert f'filename="{name}-config.json"' in config["Content-Disposition"]
    doc = json.loads(config.content)
    assert doc["model"] == "sine_mlp"
    assert doc["run"]["id"] == run.pk
    assert doc["run"]["test_accuracy"] == run.test_accuracy
    assert "code_version" in doc


def test_a_succeeded_run_without_its_file_is_404(client, owner, make_run, media):
    run = make_run(owner, status=Run.Status.SUCCEEDED)
    client.force_login(owner)

    response = client.get(reverse("run-download", args=[run.pk, "initialization.safetensors"]))

    assert response.status_code == 404


def test_the_metrics_csv_downloads_at_any_time(client, owner, make_run):
    run = make_run(owner, status=Run.Status.RUNNING)
    add_points(run, "inner_loss", [1, 2])
    client.force_login(owner)

    response = client.get(reverse("run-download", args=[run.pk, "metrics.csv"]))

    lines = b"".join(response.streaming_content).decode().splitlines()
    assert response.status_code == 200
    assert lines[0] == "step,name,value"
    assert lines[1:] == ["1,inner_loss,0.1", "2,inner_loss,0.2"]


def test_an_unknown_download_is_404(client, owner, make_run, media):
    run = with_artifacts(make_run(owner, status=Run.Status.SUCCEEDED))
    client.force_login(owner)

    response = client.get(reverse("run-download", args=[run.pk, "checkpoint.pt"]))

    assert response.status_code == 404


def test_the_run_page_offers_downloads_and_the_loading_snippet_once_succeeded(
    client, owner, make_run, media
):
    run = with_artifacts(make_run(owner, status=Run.Status.SUCCEEDED))
    client.force_login(owner)

    body = client.get(run.get_absolute_url()).content.decode()

    assert reverse("run-download", args=[run.pk, "initialization.safetensors"]) in body
    assert "from safetensors.torch import load_file" in body


def test_a_queued_run_no_live_worker_serves_says_what_it_waits_for(client, owner, make_run):
    run = make_run(owner, status=Run.Status.QUEUED, queue="gpu")
    Worker.objects.create(hostname="train-cpu@box", queues="cpu,any", last_seen=timezone.now())
    client.force_login(owner)

    body = client.get(run.get_absolute_url()).content.decode()
    assert "No worker serves the gpu queue" in body

    Worker.objects.create(hostname="train-gpu0@box", queues="gpu,any", last_seen=timezone.now())
    assert "No worker serves" not in client.get(run.get_absolute_url()).content.decode()
