"""A database outage during a run, as the fault probe made it: connections refused for a while
(a PostgreSQL restart, a network cut), then back. The worker reaches the database through a TCP
proxy on loopback that this test closes and reopens; the run must come through with every
validation and every point stored, and the worker must back off instead of hammering the
server (the probe saw 954 warnings in 30 s before).

PostgreSQL only: a SQLite file has no connection to cut. CI's first pass runs on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import pytest
from django.db import connection

import metatrain
from webapp.experiments import run_files, services
from webapp.experiments.models import Evaluation, MetricPoint, Run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; `cut()` refuses new connections and drops the
    open ones, `restore()` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)


def _metrics_lines(path) -> list[dict]:
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(line))
    return lines


def test_a_database_outage_mid_run_loses_no_evaluation_and_the_worker_backs_off(
    owner, start_worker, worker_env, wait_for, wait_for_run, tmp_path
):
    if connection.vendor != "postgresql":
        pytest.skip("an outage needs a database connection to cut: run on PostgreSQL")
    cfg = connection.settings_dict
    proxy = TcpProxy((cfg.get("HOST") or "127.0.0.1", int(cfg.get("PORT") or 5432)))
    through_proxy = worker_env["DATABASE_URL"].replace(
        f":{cfg.get('PORT') or 5432}/", f":{proxy.port}/"
    )
    assert str(proxy.port) in through_proxy
    worker = start_worker(name="outage", env={"DATABASE_URL": through_proxy})

    config = metatrain.preset(
        "sine",
        meta_iters=1100,
        checkpoint_interval=100,
        validation_interval=100,
        validation_tasks=4,
        final_eval_tasks=8,
    ).to_dict()
    config.pop("seed")
    run = services.create_experiment(owner, name="outage", config=config, seeds=[0]).runs.get()
    wait_for(
        lambda: Run.objects.filter(pk=run.pk, iteration__gte=150).exists(),
        120,
        "the run to get going",
        worker=worker,
    )

    proxy.cut()
    outage_started = time.monotonic()
    log_before = len(worker.log())
    metrics = run_files.attempt_dir(run.pk, 1) / "metrics.jsonl"
    start = max((r["iteration"] for r in _metrics_lines(metrics)), default=150)
    # Keep the database away until the worker has run at least two validations without it.
    wait_for(
        lambda: (
            sum("validation" in r and r["iteration"] > start for r in _metrics_lines(metrics)) >= 2
        ),
        120,
        "two validations during the outage",
        worker=worker,
    )
    outage = time.monotonic() - outage_started
    proxy.restore()

    run = wait_for_run(run.pk, {"succeeded", "failed", "cancelled"}, timeout=240, worker=worker)
    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    validations = list(
        Evaluation.objects.filter(run=run, kind="validation")
        .order_by("iteration")
        .values_list("iteration", flat=True)
    )
    assert validations == list(range(100, 1101, 100))  # 11 of 11
    steps = list(
        MetricPoint.objects.filter(run=run, name="inner_loss").values_list("step", flat=True)
    )
    assert sorted(steps) == list(range(1, 1101))
    during = worker.log()[log_before:]
    assert during.count("database unreachable") == 1, during[-3000:]
    assert "database reachable again" in during
    # A handful of retries with backoff, not one per call.
    assert during.count("WARNING") < 20, f"{outage:.0f} s outage:\n{during[-3000:]}"
