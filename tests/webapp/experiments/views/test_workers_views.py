"""The workers page: live workers with their device, queues and current run."""

from __future__ import annotations

from datetime import timedelta

from django.urls import reverse
from django.utils import timezone

from webapp.experiments.models import Run, Worker

URL = reverse("worker-list")


def test_the_workers_page_needs_a_login(client):
    assert client.get(URL).status_code == 302


def test_it_shows_each_gpu_with_its_memory_utilisation_and_the_runs_it_holds(
    client, owner, make_run
):
    first = make_run(owner, name="busy run", status=Run.Status.RUNNING, worker="train-gpu1@box")
    second = make_run(owner, name="second run", status=Run.Status.RUNNING, worker="train-gpu1@box")
    make_run(owner, name="done run", status=Run.Status.SUCCEEDED, worker="train-gpu1@box")
    Worker.objects.create(
        hostname="train-gpu1@box",
        device="NVIDIA H100 80GB HBM3 (80 GiB)",
        queues="gpu,any",
        gpu_index=1,
        concurrency=4,
        stats={
            "gpu": {
                "index": 1,
                "name": "NVIDIA H100 80GB HBM3",
                "memory_used_mib": 20480,
                "memory_total_mib": 81920,
                "utilization_percent": 63,
            }
        },
        last_seen=timezone.now() - timedelta(seconds=10),
    )
    client.force_login(owner)

    body = " ".join(client.get(URL).content.decode().split())

    assert "train-gpu1@box" in body
    assert "GPU 1: NVIDIA H100 80GB HBM3" in body
    assert "20.0 / 80 GiB" in body and "(25 %)" in body
    assert "63 % utilised" in body
    assert first.get_absolute_url() in body and second.get_absolute_url() in body
    assert "done run" not in body
    assert "2 of 4" in body


def test_a_cpu_worker_shows_its_cores_and_load(client, owner):
    Worker.objects.create(
        hostname="train-cpu@laptop",
        queues="cpu,any",
        stats={"cpu": {"cores": 8, "load1": 1.5}},
        last_seen=timezone.now(),
    )
    client.force_login(owner)

    body = " ".join(client.get(URL).content.decode().split())

    assert "CPU, 8 cores" in body and "load 1.5" in body and "idle" in body


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
