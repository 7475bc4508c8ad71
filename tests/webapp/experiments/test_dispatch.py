"""The outbox (webapp/experiments/dispatch.py): a run saved while the broker is down stays
queued and is sent later by the dispatcher, to a real Redis."""

from __future__ import annotations

import base64
import json
import time

import redis

from webapp.experiments import services
from webapp.experiments.dispatch import dispatch_pending_runs
from webapp.experiments.models import Run
from webapp.experiments.tasks import dispatch_pending

CLOSED_BROKER_URL = "redis://127.0.0.1:1/0"


def _messages(client: redis.Redis, queue: str) -> list[tuple[str, list]]:
    """(task name, args) of the task messages waiting in a Redis-backed Celery queue."""
    found = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        found.append((message["headers"]["task"], args))
    return found


def _create(owner, capture, config: dict, **kw) -> Run:
    """Through the service, as a view does, running the after-commit hook (the send)."""
    with capture(execute=True):
        experiment = services.create_experiment(owner, name="sine", config=config, seeds=[0], **kw)
    return Run.objects.get(experiment=experiment)


def test_a_run_saved_while_the_broker_is_down_stays_queued(
    owner, broker_down, django_capture_on_commit_callbacks, tiny_sine
):
    started = time.perf_counter()
    run = _create(owner, django_capture_on_commit_callbacks, tiny_sine)
    assert time.perf_counter() - started < 2  # the request does not hang on the broker
    assert run.status == Run.Status.QUEUED
    assert run.dispatched_at is None


def test_the_dispatcher_sends_it_once_the_broker_is_back(
    owner, django_capture_on_commit_callbacks, redis_db_url, use_broker, tiny_sine
):
    client = redis.Redis.from_url(redis_db_url)
    client.flushdb()
    with use_broker(CLOSED_BROKER_URL):
        run = _create(owner, django_capture_on_commit_callbacks, tiny_sine, queue="cpu")
        assert dispatch_pending_runs() == 0  # still down: nothing sent, nothing marked
    assert run.dispatched_at is None

    with use_broker(redis_db_url):
        assert dispatch_pending_runs() == 1
        run.refresh_from_db()
        assert run.dispatched_at is not None
        assert _messages(client, "cpu") == [("webapp.experiments.tasks.train_run", [run.pk])]
        # Sent once: the next round leaves it alone until `resend_after` has passed.
        assert dispatch_pending() == 0
    assert len(_messages(client, "cpu")) == 1
    client.flushdb()


def test_a_run_sent_after_commit_is_not_sent_again(
    owner, real_redis, django_capture_on_commit_callbacks, tiny_sine
):
    run = _create(owner, django_capture_on_commit_callbacks, tiny_sine)
    assert run.dispatched_at is not None
    assert _messages(real_redis, "any") == [("webapp.experiments.tasks.train_run", [run.pk])]
    assert dispatch_pending_runs() == 0


def test_the_dispatcher_skips_runs_that_are_not_queued(owner, make_experiment, real_redis):
    run = make_experiment(owner).runs.get()  # commit hooks not run: never dispatched
    services.request_cancel(run)
    assert dispatch_pending_runs() == 0
    assert real_redis.llen("any") == 0
