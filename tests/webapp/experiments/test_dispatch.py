"""The outbox (webapp/experiments/dispatch.py): a run saved while the broker is down stays
queued and is sent later by the dispatcher, to a real Redis."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta

import redis
from django.utils import timezone

from webapp.experiments import services
from webapp.experiments.dispatch import dispatch_pending_runs, queue_served, resend_delay
from webapp.experiments.models import Run, Worker
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


# -- resends: only when a live worker serves the queue, each after twice as long -------------
def _age_dispatch(run: Run, seconds: float) -> None:
    Run.objects.filter(pk=run.pk).update(dispatched_at=timezone.now() - timedelta(seconds=seconds))


def _serve(*queues: str, seen_ago: float = 0) -> Worker:
    return Worker.objects.create(
        hostname=f"w-{'-'.join(queues)}-{seen_ago}",
        queues=",".join(queues),
        last_seen=timezone.now() - timedelta(seconds=seen_ago),
    )


def test_a_run_no_live_worker_can_take_is_sent_once_and_never_again(
    owner, real_redis, django_capture_on_commit_callbacks, tiny_sine, settings
):
    """The fault probe's case: runs on the gpu queue with only CPU workers alive. Before, the
    dispatcher resent them every round (3 runs became 16 messages in 5 minutes)."""
    settings.RUN_REDISPATCH_AFTER_SECONDS = 60
    _serve("cpu", "any")
    _serve("gpu", "any", seen_ago=3600)  # a GPU worker that went away an hour ago
    runs = [
        _create(owner, django_capture_on_commit_callbacks, tiny_sine, queue="gpu") for _ in range(3)
    ]
    for _ in range(20):  # five minutes of beat rounds, and far more
        for run in runs:
            _age_dispatch(run, 10**6)
        dispatch_pending_runs()
    assert len(_messages(real_redis, "gpu")) == 3
    assert not queue_served("gpu") and queue_served("any") and queue_served("cpu")


def test_an_unclaimed_run_is_resent_after_a_delay_that_doubles(
    owner, real_redis, django_capture_on_commit_callbacks, tiny_sine, settings
):
    settings.RUN_REDISPATCH_AFTER_SECONDS = 60
    settings.RUN_REDISPATCH_MAX_SECONDS = 200
    _serve("cpu", "any")
    run = _create(owner, django_capture_on_commit_callbacks, tiny_sine, queue="cpu")
    assert Run.objects.get(pk=run.pk).dispatch_count == 1

    _age_dispatch(run, 59)
    assert dispatch_pending_runs() == 0
    _age_dispatch(run, 61)
    assert dispatch_pending_runs() == 1  # the message was lost, say: the 2nd send
    _age_dispatch(run, 100)
    assert dispatch_pending_runs() == 0  # now it waits 120 s
    _age_dispatch(run, 121)
    assert dispatch_pending_runs() == 1
    _age_dispatch(run, 199)
    assert dispatch_pending_runs() == 0  # 240 s, capped at 200
    _age_dispatch(run, 201)
    assert dispatch_pending_runs() == 1
    assert Run.objects.get(pk=run.pk).dispatch_count == 4


def test_resend_delays_double_from_the_base_up_to_the_cap(settings):
    settings.RUN_REDISPATCH_MAX_SECONDS = 3600
    base = timedelta(seconds=600)
    assert [resend_delay(n, base).total_seconds() for n in (0, 1, 2, 3, 4, 99)] == [
        600,
        600,
        1200,
        2400,
        3600,
        3600,
    ]
