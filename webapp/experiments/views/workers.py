"""Which workers are alive: per GPU (or CPU), its device's figures, the runs it holds, its queues
and when it last reported."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from ..models import Run, Worker

SEEN_WITHIN = timedelta(minutes=1)


def device_rows(workers: list[Worker]) -> list[dict]:
    """One row per worker (one GPU, or a CPU worker) with its device's figures and the runs it
    holds now."""
    held: dict[str, list[Run]] = defaultdict(list)
    running = (
        Run.objects.filter(status=Run.Status.RUNNING, worker__in=[w.hostname for w in workers])
        .select_related("experiment")
        .order_by("pk")
    )
    for run in running:
        held[run.worker].append(run)
    rows = []
    for worker in workers:
        gpu = (worker.stats or {}).get("gpu")
        cpu = (worker.stats or {}).get("cpu")
        memory = None
        if gpu and gpu.get("memory_total_mib"):
            memory = {
                "used_gib": gpu["memory_used_mib"] / 1024,
                "total_gib": gpu["memory_total_mib"] / 1024,
                "percent": round(100 * gpu["memory_used_mib"] / gpu["memory_total_mib"]),
            }
        rows.append(
            {
                "worker": worker,
                "gpu": gpu,
                "cpu": cpu,
                "memory": memory,
                "runs": held.get(worker.hostname, []),
            }
        )
    return rows


@login_required
def worker_list(request: HttpRequest) -> HttpResponse:
    since = timezone.now() - SEEN_WITHIN
    workers = list(Worker.objects.filter(last_seen__gte=since).order_by("hostname"))
    queued = dict(
        Run.objects.filter(status=Run.Status.QUEUED)
        .values_list("queue")
        .annotate(n=Count("id"))
        .values_list("queue", "n")
    )
    context = {
        "workers": workers,
        "rows": device_rows(workers),
        "seen_within_seconds": int(SEEN_WITHIN.total_seconds()),
        "queued": queued,
        "queued_total": sum(queued.values()),
        "silent_count": Worker.objects.filter(last_seen__lt=since).count(),
    }
    return render(request, "experiments/workers.html", context)
