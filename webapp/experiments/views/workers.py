"""Which workers are alive, on which device, serving which queues, and what they are running."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from ..models import Run, Worker

SEEN_WITHIN = timedelta(minutes=1)


@login_required
def worker_list(request: HttpRequest) -> HttpResponse:
    since = timezone.now() - SEEN_WITHIN
    workers = (
        Worker.objects.filter(last_seen__gte=since)
        .select_related("current_run__experiment")
        .order_by("hostname")
    )
    queued = dict(
        Run.objects.filter(status=Run.Status.QUEUED)
        .values_list("queue")
        .annotate(n=Count("id"))
        .values_list("queue", "n")
    )
    context = {
        "workers": workers,
        "seen_within_seconds": int(SEEN_WITHIN.total_seconds()),
        "queued": queued,
        "queued_total": sum(queued.values()),
        "silent_count": Worker.objects.filter(last_seen__lt=since).count(),
    }
    return render(request, "experiments/workers.html", context)
