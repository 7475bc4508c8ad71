"""End-to-end fixtures: REAL Celery worker processes against a REAL Redis and this test's
database. No eager mode, no mocks: what a user's `make run` does, minus the web server.

Reuse (e.g. browser tests)::

    pytestmark = [pytest.mark.e2e, pytest.mark.slow]

    def test_something(live_server, celery_worker, wait_for_run):
        ...  # create runs through the UI or services; celery_worker trains them
        run = wait_for_run(run_pk, {"succeeded"}, timeout=120, worker=celery_worker)

Fixtures
--------
`e2e_redis` (redis.Redis)
    A real Redis database that these tests own (E2E_REDIS_DB, default 11, on the server of
    `redis_server_url` from tests/conftest.py), flushed at the start and the end of the test.
    While the test runs, this process's Celery app publishes there too, so runs created by
    `services.create_experiment` (or a view, e.g. under `live_server`) reach the worker.
`worker_env` (dict)
    The environment a worker gets: DATABASE_URL naming this test's database (the SQLite test
    file, or the PostgreSQL test database), CELERY_BROKER_URL, RUNS_ROOT and MEDIA_ROOT under
    tmp_path (this process's settings point to the same folders, so stored files can be
    read), METATRAIN_DATA, RUN_HEARTBEAT_SECONDS=1, DB_IDLE_IN_TRANSACTION_SECONDS=5 and one
    torch thread. Add keys to it before starting a worker to change its settings.
`start_worker(queues=("cpu", "any"), name=None, env=None) -> WorkerProcess`
    Starts `celery -A webapp worker` (the same command line as `make run`: concurrency 1,
    prefetch disabled; `webapp.devstack.start_training_worker`) in its own process group
    and waits until it has registered its Worker row. Every worker still running at the end
    of the test is stopped (SIGTERM, then SIGKILL). Start several to test hand-overs.
`celery_worker` (WorkerProcess)
    One worker on the cpu and any queues, already started.
`owner`
    A user (username "owner", password "pw") in the transactional database.
`browser_page` (playwright Page)
    A page of a fresh Chromium (/usr/bin/chromium; skips without it), 1360x900, with
    `page.errors` collecting uncaught JavaScript errors. Pair it with `live_server`.
`plotly_served`
    Serves Plotly.js from the plotly package as static/vendor/plotly.min.js (never a CDN).

`WorkerProcess` (`webapp.devstack`): `.hostname`, `.pid`, `.log()` (its output so far: put
it in assertion messages), `.terminate(timeout)` (SIGTERM to the main process: Celery's warm
shutdown, which makes a training run checkpoint and go back to the queue; returns the exit
code), `.kill()` (SIGKILL to the whole process group: a crashed machine; the run is left
`running` until the supervisor declares it lost), `.pause()` / `.resume()` (SIGSTOP / SIGCONT
to the whole process group: a frozen machine that wakes up later), `.children()` (the pids of
its pool child and task workers), `.alive`, `.close()`.

`wait_for(predicate, timeout, what, worker=None)` and `wait_for_run(pk, statuses, timeout,
worker=None)` (fixtures returning functions) poll the database until true; on timeout they fail
with the run's status and reason and the worker's log.

Needs `transactional_db` (pulled in by `worker_env`): the worker is another process and only
sees committed rows. With SQLite the test database is a file (settings.py sets TEST NAME under
var/ for that reason).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection, connections

from tests.processes import worker_redis_db
from webapp.celery import app
from webapp.devstack import DevStackError, WorkerProcess, start_training_worker
from webapp.experiments.models import Run

E2E_REDIS_DB = worker_redis_db(int(os.environ.get("E2E_REDIS_DB", "11")))
WORKER_START_TIMEOUT = 90


def database_url() -> str:
    """A URL naming the database this test process uses right now (the test database)."""
    cfg = connection.settings_dict
    if connection.vendor == "sqlite":
        name = str(cfg["NAME"])
        if name == ":memory:" or "mode=memory" in name:
            raise RuntimeError("the worker needs a file database: set TEST NAME for SQLite")
        return f"sqlite:///{name}"
    if connection.vendor == "postgresql":
        user = quote(cfg.get("USER") or "")
        password = quote(cfg.get("PASSWORD") or "")
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        host = cfg.get("HOST") or "localhost"
        port = f":{cfg['PORT']}" if cfg.get("PORT") else ""
        return f"postgres://{auth}{host}{port}/{cfg['NAME']}"
    raise RuntimeError(f"no worker URL for database vendor {connection.vendor}")


def _wait_for(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    interval: float = 0.2,
    worker: WorkerProcess | None = None,
):
    """Poll until predicate() is truthy and return it; fail naming `what` (and showing the
    worker's log) after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            log = f"\nworker log:\n{worker.log()[-4000:]}" if worker is not None else ""
            pytest.fail(f"timed out after {timeout} s waiting for {what}{log}")
        time.sleep(interval)


def _wait_for_run(
    pk: int, statuses: set[str], timeout: float, worker: WorkerProcess | None = None
) -> Run:
    """The run once its status is one of `statuses`."""

    def reached():
        run = Run.objects.get(pk=pk)
        if run.status in statuses:
            return run
        if worker is not None and not worker.alive:
            pytest.fail(f"worker died while run {pk} was {run.status}:\n{worker.log()[-4000:]}")
        return None

    def describe() -> str:
        run = Run.objects.get(pk=pk)
        return f"run {pk} to become {sorted(statuses)} (it is {run.status}: {run.status_reason})"

    deadline = time.monotonic() + timeout
    while True:
        run = reached()
        if run is not None:
            return run
        if time.monotonic() > deadline:
            log = f"\nworker log:\n{worker.log()[-4000:]}" if worker is not None else ""
            pytest.fail(f"timed out after {timeout} s waiting for {describe()}{log}")
        time.sleep(0.2)


@pytest.fixture
def e2e_redis(redis_server_url) -> Iterator[redis.Redis]:
    url = f"{redis_server_url}/{E2E_REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    # Celery reads the CELERY_BROKER_URL environment variable before its configuration.
    previous = app.conf.broker_url
    previous_env = os.environ.get("CELERY_BROKER_URL")
    app.conf.broker_url = url
    os.environ["CELERY_BROKER_URL"] = url
    app._pool = None
    app.amqp._producer_pool = None
    try:
        yield client
    finally:
        app.conf.broker_url = previous
        if previous_env is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = previous_env
        app._pool = None
        app.amqp._producer_pool = None
        client.flushdb()


@pytest.fixture
def worker_env(transactional_db, e2e_redis, settings, tmp_path) -> dict[str, str]:
    settings.RUNS_ROOT = tmp_path / "runs"
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.DATASET_CACHE_ROOT = tmp_path / "dataset-cache"
    kwargs = e2e_redis.connection_pool.connection_kwargs
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "webapp.settings",
            "DATABASE_URL": database_url(),
            "CELERY_BROKER_URL": f"redis://{kwargs['host']}:{kwargs['port']}/{E2E_REDIS_DB}",
            "RUNS_ROOT": str(settings.RUNS_ROOT),
            "MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "DATASET_CACHE_ROOT": str(settings.DATASET_CACHE_ROOT),
            "METATRAIN_DATA": django_settings.METATRAIN_DATA,
            "RUN_HEARTBEAT_SECONDS": "1",
            # Tests that pause a worker declare its run lost within seconds: a worker paused
            # inside a write must not keep the run's row locked for the default 90 s.
            "DB_IDLE_IN_TRANSACTION_SECONDS": "5",
            # Task worker processes cost more to start than these tiny runs take; the test
            # that checks them asks for two.
            "WORKER_TASK_WORKERS": "1",
            # Tiny models on a shared machine: one intra-op thread, no oversubscription.
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@pytest.fixture
def start_worker(worker_env, tmp_path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(
        queues=("cpu", "any"), name: str | None = None, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        """A training worker; `env` adds to (or overrides) the worker's environment."""
        hostname = f"{name or 'e2e'}-{uuid.uuid4().hex[:8]}@test"
        worker = start_training_worker(
            queues,
            hostname=hostname,
            env={**worker_env, **(env or {})},
            log_path=tmp_path / f"worker-{hostname.split('@')[0]}.log",
        )
        started.append(worker)
        try:
            worker.wait_registered(WORKER_START_TIMEOUT)
        except DevStackError as exc:
            pytest.fail(str(exc))
        return worker

    yield start
    for worker in started:
        worker.close()


@pytest.fixture
def owner(transactional_db, django_user_model):
    """A user who owns the experiments these tests submit (password "pw")."""
    return django_user_model.objects.create_user(username="owner", password="pw")


@pytest.fixture
def celery_worker(start_worker) -> WorkerProcess:
    return start_worker()


@pytest.fixture
def wait_for() -> Callable:
    return _wait_for


@pytest.fixture
def wait_for_run() -> Callable:
    return _wait_for_run


# The browser tests' Chromium (Debian's, driven by Playwright) and Plotly.js from our finder.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PLOTLY_FINDER = "webapp.experiments.staticfinders.PlotlyFinder"


@pytest.fixture
def browser_page(monkeypatch):
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the test makes
    # between browser steps are still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": 1360, "height": 900}, accept_downloads=True
        )
        page = context.new_page()
        page.set_default_timeout(20_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.errors = errors
        try:
            yield page
        finally:
            # While Playwright's event loop runs in this thread, Django keeps its connections
            # in async (contextvar) storage, apart from the thread's own: the ORM calls made
            # meanwhile opened connections that the test database teardown never sees (and
            # cannot drop the database while they live). Close them while the loop runs.
            connections.close_all()
            context.close()
            browser.close()


@pytest.fixture
def plotly_served(settings):
    """Plotly.js comes from the plotly package through our finder (never a CDN)."""
    if PLOTLY_FINDER not in settings.STATICFILES_FINDERS:
        settings.STATICFILES_FINDERS = [*settings.STATICFILES_FINDERS, PLOTLY_FINDER]
