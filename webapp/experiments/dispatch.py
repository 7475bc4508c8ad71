"""Sending "run N is ready" to the broker: after commit, and again by the periodic dispatcher.

The database row is the outbox: a queued run whose message may not have reached the broker
(`dispatched_at` empty) is sent by `dispatch_pending_runs`. A run that stays unclaimed although
a live worker serves its queue may have lost its message (Redis restarted empty): it is sent
again, each time after twice as long (RUN_REDISPATCH_AFTER_SECONDS, then doubled per resend, at
most RUN_REDISPATCH_MAX_SECONDS). A run whose queue no live worker serves is not resent: its
message waits in the broker for the first such worker, and the run page says why it waits. A
duplicate message is harmless because a worker must win the conditional UPDATE in `claim_run`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from .models import Queue, Run, Worker

logger = logging.getLogger(__name__)

TRAIN_TASK = "webapp.experiments.tasks.train_run"
# A worker whose row was refreshed this recently is alive (it refreshes every 15 s).
WORKER_ALIVE_SECONDS = max(60, 4 * settings.WORKER_HEARTBEAT_SECONDS)


def queue_name(run_queue: str) -> str:
    """Celery queue for a run: workers consume `gpu` or `cpu`, and `any` as well."""
    return run_queue if run_queue in (Queue.GPU, Queue.CPU) else Queue.ANY


def send_run(run_id: int, run_queue: str) -> bool:
    """Publish one run's message; False (and the run stays queued) when the broker is down."""
    from webapp.celery import app

    try:
        app.send_task(
            TRAIN_TASK,
            args=[run_id],
            queue=queue_name(run_queue),
            retry=False,  # fail fast; the dispatcher retries later
        )
    except Exception as exc:  # kombu raises many kinds of connection errors
        logger.warning("run %s not dispatched, broker unavailable: %s", run_id, exc)
        return False
    Run.objects.filter(pk=run_id, status=Run.Status.QUEUED).update(
        dispatched_at=timezone.now(), dispatch_count=F("dispatch_count") + 1
    )
    return True


def served_queues(now=None) -> set[str]:
    """The Celery queues at least one live worker consumes."""
    since = (now or timezone.now()) - timedelta(seconds=WORKER_ALIVE_SECONDS)
    served: set[str] = set()
    for queues in Worker.objects.filter(last_seen__gte=since).values_list("queues", flat=True):
        served.update(name for name in queues.split(",") if name)
    return served


def queue_served(run_queue: str, now=None) -> bool:
    """Whether a live worker would take a run of this queue now."""
    return queue_name(run_queue) in served_queues(now)


def resend_delay(dispatch_count: int, base: timedelta | None = None) -> timedelta:
    """How long after its last send an unclaimed run is sent again: the base delay, doubled
    for every send after the first, capped at RUN_REDISPATCH_MAX_SECONDS."""
    if base is None:
        base = timedelta(seconds=settings.RUN_REDISPATCH_AFTER_SECONDS)
    longest = timedelta(seconds=settings.RUN_REDISPATCH_MAX_SECONDS)
    doublings = min(max(dispatch_count - 1, 0), 30)
    return min(base * (2**doublings), max(longest, base))


def enqueue_on_commit(runs: Iterable[Run]) -> None:
    """Send the runs' messages once the transaction that saved them has committed."""
    pending = [(run.pk, run.queue) for run in runs]

    def _send() -> None:
        for run_id, run_queue in pending:
            if not send_run(run_id, run_queue):
                # The broker is down: the rest would each wait for the same timeout inside
                # the user's request. The periodic dispatcher sends them once it is back.
                break

    transaction.on_commit(_send)


def dispatch_pending_runs(resend_after: timedelta | None = None) -> int:
    """Send every queued run never dispatched, and resend those whose message may be lost (see
    the module docstring; `resend_after` is the base delay, default
    RUN_REDISPATCH_AFTER_SECONDS). Returns how many were sent."""
    now = timezone.now()
    served = served_queues(now)
    # Every resend waits at least the base delay: the rest are not even read.
    base = resend_delay(1, resend_after)
    pending = Run.objects.filter(status=Run.Status.QUEUED, cancel_requested=False).filter(
        Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=now - base)
    )
    sent = 0
    # Oldest first, so the queue stays first come, first served after a resend.
    rows = pending.order_by("created_at", "pk").values_list(
        "pk", "queue", "dispatched_at", "dispatch_count"
    )
    for run_id, run_queue, dispatched_at, count in rows:
        if dispatched_at is not None:
            if queue_name(run_queue) not in served:
                continue  # its message waits for the first worker of its queue
            if now - dispatched_at < resend_delay(count, resend_after):
                continue
        if not send_run(run_id, run_queue):
            break  # the broker is down: the next round tries again
        sent += 1
    return sent
