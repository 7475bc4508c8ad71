"""Sending "run N is ready" to the broker: after commit, and again by the periodic dispatcher.

The database row is the outbox: a queued run whose message may not have reached the broker
(`dispatched_at` empty or old) is sent again by `dispatch_pending_runs`. A duplicate message
is harmless because a worker must win the conditional UPDATE in `claim_run` to train.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .models import Queue, Run

logger = logging.getLogger(__name__)

TRAIN_TASK = "webapp.experiments.tasks.train_run"


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
    Run.objects.filter(pk=run_id, status=Run.Status.QUEUED).update(dispatched_at=timezone.now())
    return True


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
    """Send every queued run never dispatched, or dispatched more than `resend_after` ago
    (default RUN_REDISPATCH_AFTER_SECONDS) without being claimed: the message was lost, e.g.
    Redis restarted empty. Returns how many were sent."""
    if resend_after is None:
        resend_after = timedelta(seconds=settings.RUN_REDISPATCH_AFTER_SECONDS)
    cutoff = timezone.now() - resend_after
    pending = Run.objects.filter(status=Run.Status.QUEUED, cancel_requested=False).filter(
        dispatched_at__isnull=True
    ) | Run.objects.filter(
        status=Run.Status.QUEUED, cancel_requested=False, dispatched_at__lt=cutoff
    )
    sent = 0
    # Oldest first, so the queue stays first come, first served after a resend.
    for run_id, run_queue in pending.order_by("created_at", "pk").values_list("pk", "queue"):
        if not send_run(run_id, run_queue):
            break  # the broker is down: the next round tries again
        sent += 1
    return sent
