"""Celery tasks for uploaded datasets: thin wrappers around `processing` and `services`.

- `process_dataset(dataset_id)`: claim a pending dataset, extract and validate its zip in the
  worker (never in the request), record ready or rejected. Soft time limit
  DATASET_TASK_TIME_LIMIT_SECONDS (the dataset is rejected with that reason), hard limit a minute
  later; early acknowledgement, as for runs: a worker that dies mid-way is caught by
  `supervise_datasets`, not by broker redelivery.
- `supervise_datasets()`: periodic (celery beat, on the `default` queue): resend pending datasets
  whose message never arrived, and retry (or reject) those whose worker was lost.
"""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from . import processing, services


@shared_task(
    name=services.PROCESS_TASK,
    ignore_result=True,
    acks_late=False,
    soft_time_limit=settings.DATASET_TASK_TIME_LIMIT_SECONDS,
    time_limit=services.hard_time_limit(),
)
def process_dataset(dataset_id: int) -> str:
    """Take one pending dataset to ready or rejected; returns the outcome."""
    return processing.process_dataset(dataset_id)


@shared_task(name="webapp.datasets.tasks.supervise_datasets", ignore_result=True)
def supervise_datasets() -> dict:
    """Retry or reject datasets stuck in validating; (re)send pending ones."""
    result = services.requeue_stuck_datasets()
    result["sent"] = services.dispatch_pending_datasets()
    return result
