"""Fixtures for the worker side's tests (tasks, dispatch): which broker the Celery app in this
process publishes to, a real Redis, and a tiny sine config."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest
import redis

from metatrain import preset
from tests.processes import worker_redis_db
from webapp.celery import app

# A port nothing listens on: publishing fails at once (connection refused).
CLOSED_BROKER_URL = "redis://127.0.0.1:1/0"
# The database of the real Redis (tests/conftest.py) these tests own and flush.
REDIS_DB = worker_redis_db(13)

# A sine run that trains, validates twice, checkpoints twice and is evaluated in seconds.
TINY_SINE = {
    k: v
    for k, v in preset(
        "sine",
        meta_iters=20,
        checkpoint_interval=10,
        validation_interval=10,
        validation_tasks=4,
        final_eval_tasks=6,
    )
    .to_dict()
    .items()
    if k != "seed"
}


@contextlib.contextmanager
def broker(url: str) -> Iterator[None]:
    """Make this process's Celery app publish to `url` (and forget its pooled connections).

    Celery reads the CELERY_BROKER_URL environment variable before its own configuration, so
    both are set for the duration."""

    def reset() -> None:
        # Drop the app's references; kombu keeps one pool per URL and hands it back later.
        app._pool = None
        app.amqp._producer_pool = None

    previous = app.conf.broker_url
    previous_env = os.environ.get("CELERY_BROKER_URL")
    app.conf.broker_url = url
    os.environ["CELERY_BROKER_URL"] = url
    reset()
    try:
        yield
    finally:
        app.conf.broker_url = previous
        if previous_env is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = previous_env
        reset()


@pytest.fixture
def use_broker():
    """`with use_broker(url): ...` publishes to `url` inside the block."""
    return broker


@pytest.fixture
def tiny_sine() -> dict:
    return dict(TINY_SINE)


@pytest.fixture
def redis_db_url(redis_server_url) -> str:
    return f"{redis_server_url}/{REDIS_DB}"


@pytest.fixture
def broker_down() -> Iterator[str]:
    with broker(CLOSED_BROKER_URL):
        yield CLOSED_BROKER_URL


@pytest.fixture
def real_redis(redis_db_url) -> Iterator[redis.Redis]:
    """A real, empty Redis database that this process's Celery app publishes to."""
    client = redis.Redis.from_url(redis_db_url)
    client.flushdb()
    with broker(redis_db_url):
        yield client
    client.flushdb()


@pytest.fixture(autouse=True)
def one_task_worker(settings) -> None:
    """Runs trained in this process use no task worker processes (their start-up would cost
    more than these tiny runs); the test that checks them asks for two."""
    settings.WORKER_TASK_WORKERS = 1


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: one intra-op thread is ~100x faster than two
    threads fighting other processes for the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def work_dirs(settings, tmp_path):
    """Runs' working folders and stored files under this test's tmp_path."""
    settings.RUNS_ROOT = tmp_path / "runs"
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.DATASET_CACHE_ROOT = tmp_path / "dataset-cache"
    return settings
