"""Which pytest-xdist process this is, and the per-process resources that follow from it."""

from __future__ import annotations

import os

# 0 for the first (or only) test process, 1 for pytest-xdist's gw1, ...
WORKER_INDEX = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)


def worker_redis_db(base: int) -> int:
    """The Redis database number this test process uses for a suite-wide `base` number.

    The suite's bases are 11 (end-to-end workers) and 13 (dispatch tests); each process adds
    its index, so two processes (`make test`) never share a database. A server has 16."""
    db = base + WORKER_INDEX
    if db > 15:
        raise RuntimeError(f"Redis database {db} does not exist: run at most 2 test processes")
    return db
