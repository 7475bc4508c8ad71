"""tools/runs_per_gpu.py on the CPU: K real training processes side by side, their
meta-iterations counted from their logs over a window, turned into runs per hour."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

import metatrain

SCRIPT = Path(settings.BASE_DIR) / "tools" / "runs_per_gpu.py"


@pytest.mark.slow
def test_it_measures_k_runs_sharing_a_device_and_reports_runs_per_hour():
    argv = [sys.executable, str(SCRIPT), "--preset", "sine", "--k", "1,2", "--seconds", "1.5"]
    argv += ["--warmup", "3", "--device", "cpu", "--json"]
    done = subprocess.run(argv, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    first, second = report["measurements"]
    assert (first["k"], second["k"]) == (1, 2)
    assert len(second["iterations"]) == 2 and min(second["iterations"]) > 0
    meta_iters = metatrain.preset("sine").meta_iters
    for m in report["measurements"]:
        assert m["total"] == pytest.approx(sum(m["iterations"]) / m["seconds"], rel=0.01)
        assert m["runs_per_hour"] == pytest.approx(m["total"] * 3600 / meta_iters, rel=0.01)
        assert m["peak_memory_mib"] is None  # no GPU figures on a CPU


def test_bad_k_is_refused_with_the_reason():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--k", "1,two"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "comma-separated whole numbers" in done.stderr
