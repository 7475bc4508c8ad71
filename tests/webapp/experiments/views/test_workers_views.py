"""The workers page: live workers with their device, queues and current run."""

from __future__ import annotations

from datetime import timedelta

from django.urls import reverse
from django.utils import timezone

from webapp.experiments.models import Run, Worker

URL = reverse("worker-list")


def test_the_workers_page_needs_a_login(client):
    assert client.get(URL).status_code == 302


def test_it_lists_workers_seen_in_the_last_minute_with_their_run(client, owner, make_run):
    run = make_run(owner, name="busy run", status=Run.Status.RUNNING)
    Worker.objects.create(
        hostname="celery@gpu-box",
        device="cuda:0 NVIDIA H100",
        queues="gpu,any",
        current_run=run,
        last_seen=timezone.now() - timedelta(seconds=10),
    )
    client.force_login(owner)

    body = client.get(URL).content.decode()

    assert "celery@gpu-box" in body
    assert "cuda:0 NVIDIA H100" in body
    assert "gpu,any" in body
    assert run.get_absolute_url() in body and "busy run" in body


def test_it_hides_workers_silent_for_more_than_a_minute(client, owner):
    Worker.objects.create(hostname="celery@alive", last_seen=timezone.now())
    Worker.objects.create(hostname="celery@gone", last_seen=timezone.now() - timedelta(seconds=90))
    client.force_login(owner)

    response = client.get(URL)

    body = response.content.decode()
    assert "celery@alive" in body
    assert "celery@gone" not in body
    assert response.context["silent_count"] == 1


def test_it_counts_queued_runs_per_queue(client, owner, make_experiment):
    make_experiment(owner, seeds=[0, 1], queue="gpu")
    make_experiment(owner, seeds=[0], queue="cpu")
    client.force_login(owner)

    response = client.get(URL)

    assert response.context["queued"] == {"gpu": 2, "cpu": 1}
    assert response.context["queued_total"] == 3
