"""`manage.py run_worker` started as an operator would: a real Celery worker registers under
the command's name, with its device's figures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from django.conf import settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_it_starts_a_worker_that_registers_with_its_cpu_figures(worker_env, wait_for, tmp_path):
    from webapp.experiments.models import Worker

    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "run_worker", "--queues", "cpu,any", "--hostname", "box"],
        cwd=settings.BASE_DIR,
        env=worker_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        worker = wait_for(
            lambda: Worker.objects.filter(hostname="train-cpu@box").first(),
            90,
            "the worker to register",
        )
        assert worker.gpu_index is None and worker.concurrency == 1
        assert set(worker.stats) == {"cpu"}
        assert worker.stats["cpu"]["cores"] >= 1
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
