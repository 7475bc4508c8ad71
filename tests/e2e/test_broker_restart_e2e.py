"""Redis goes away and comes back empty: the database is the outbox, so no run is lost.

A Redis server this test owns (no persistence: a restart is a fresh, empty server at the same
address), a real worker on it, and this process's dispatcher (`dispatch_pending_runs`, what
beat calls every 15 s) run by hand.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import metatrain
from webapp.celery import app
from webapp.devstack import RedisServer, free_port
from webapp.experiments import services
from webapp.experiments.dispatch import dispatch_pending_runs
from webapp.experiments.models import Run, RunAttempt

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FINAL = {Run.Status.SUCCEEDED, Run.Status.FAILED, Run.Status.CANCELLED}


def _use_broker(url: str) -> None:
    """Point this process's Celery app at `url` (new connections from now on)."""
    app.conf.broker_url = url
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def own_redis(worker_env, tmp_path, monkeypatch) -> Iterator[RedisServer]:
    """A Redis on a fixed port of 127.0.0.1 that the test may stop and start; the workers
    started afterwards and this process's Celery app use it."""
    server = RedisServer(tmp_path / "redis", port=free_port())
    server.start()
    previous = app.conf.broker_url
    monkeypatch.setenv("CELERY_BROKER_URL", server.url)
    worker_env["CELERY_BROKER_URL"] = server.url
    _use_broker(server.url)
    try:
        yield server
    finally:
        _use_broker(previous)
        server.stop()


def _tiny_sine() -> dict:
    config = metatrain.preset(
        "sine",
        meta_iters=30,
        checkpoint_interval=10,
        validation_interval=10,
        validation_tasks=4,
        final_eval_tasks=8,
    ).to_dict()
    config.pop("seed")
    return config


def _submit(owner) -> Run:
    """As the view does: saved in one transaction, sent to Redis after commit."""
    experiment = services.create_experiment(owner, name="restart", config=_tiny_sine(), seeds=[0])
    return experiment.runs.get()


def test_a_run_created_while_redis_is_down_is_trained_once_redis_is_back(
    owner, own_redis, start_worker, wait_for, wait_for_run
):
    worker = start_worker(name="patient")
    own_redis.stop()
    # The worker has noticed, and failed to reconnect at least once, before the run is saved.
    wait_for(
        lambda: "Cannot connect to redis" in worker.log(), 30, "a failed reconnect", worker=worker
    )

    started = time.perf_counter()
    run = _submit(owner)
    assert time.perf_counter() - started < 5  # the request does not hang on the broker
    run.refresh_from_db()
    assert (run.status, run.dispatched_at) == (Run.Status.QUEUED, None)
    assert dispatch_pending_runs() == 0  # still down: nothing sent, nothing marked

    own_redis.start()
    # The dispatcher's next rounds send it (the first may still meet a dead connection).
    wait_for(dispatch_pending_runs, 30, "the dispatcher to send the run", interval=1)
    run.refresh_from_db()
    assert run.dispatched_at is not None

    run = wait_for_run(run.pk, FINAL, timeout=90, worker=worker)
    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    # The same worker process, reconnected on its own, trained it in one attempt.
    assert worker.alive and run.worker == worker.hostname
    assert worker.log().count("Connected to redis://") == 2
    assert RunAttempt.objects.filter(run=run).count() == 1


def test_a_message_lost_in_a_redis_restart_is_sent_again_after_the_redispatch_window(
    owner, own_redis, start_worker, wait_for, wait_for_run, settings
):
    settings.RUN_REDISPATCH_AFTER_SECONDS = 3600
    run = _submit(owner)  # no worker yet: the message waits in Redis
    run.refresh_from_db()
    first_dispatch = run.dispatched_at
    assert first_dispatch is not None
    assert own_redis.client().llen("any") == 1

    own_redis.stop()
    own_redis.start()  # fresh and empty: the message is gone, the run is still queued
    assert own_redis.client().llen("any") == 0
    worker = start_worker(name="late")

    # Sent recently: within the window the dispatcher leaves it alone (two rounds, so a first
    # round on a dead connection cannot hide a send).
    assert dispatch_pending_runs() == 0
    assert dispatch_pending_runs() == 0
    assert own_redis.client().llen("any") == 0
    assert Run.objects.get(pk=run.pk).status == Run.Status.QUEUED

    settings.RUN_REDISPATCH_AFTER_SECONDS = 1
    time.sleep(1.1)
    wait_for(dispatch_pending_runs, 30, "the dispatcher to send the run again", interval=1)
    run.refresh_from_db()
    assert run.dispatched_at > first_dispatch

    run = wait_for_run(run.pk, FINAL, timeout=90, worker=worker)
    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    assert run.worker == worker.hostname
    assert RunAttempt.objects.filter(run=run).count() == 1
