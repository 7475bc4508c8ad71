"""`manage.py chaos` as a user runs it: a private Redis and database, a real worker SIGKILLed
mid-run, a fresh one resuming the run; the report (JSON) says the run recovered intact."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from django.conf import settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LOST_AFTER = 6


def test_one_chaos_cycle_recovers_the_killed_run_without_losing_or_duplicating_points():
    argv = [sys.executable, "manage.py", "chaos", "--cycles", "1", "--json"]
    # Half the default run (3,000 iterations, a checkpoint and a validation every 500).
    argv += ["--iterations", "3000", "--checkpoint-interval", "500", "--validation-interval"]
    argv += ["500", "--lost-after", str(LOST_AFTER), "--seed", "7"]
    done = subprocess.run(argv, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout)

    assert report["cycles"] == 1
    assert report["recovered"] == 1
    assert report["lost"] == 0
    assert report["duplicated"] == 0
    assert report["changed"] == 0
    assert report["ok"] is True
    cycle = report["per_cycle"][0]
    assert cycle["signal"] == "kill"
    assert cycle["detected_as"] == "lost"
    assert cycle["status"] == "succeeded"
    assert cycle["attempts"] == 2
    # Killed after its first checkpoint, resumed from the last one it wrote.
    assert cycle["resumed_from"] == cycle["checkpoint_at_kill"] >= 500
    assert cycle["killed_at_iteration"] >= cycle["checkpoint_at_kill"]
    # The file, not its record, is the truth: the record can only lag it.
    assert cycle["checkpoint_at_kill"] >= cycle["checkpoint_recorded_at_kill"] >= 500
    # Not before the heartbeat was LOST_AFTER seconds old, and not long after.
    age = cycle["heartbeat_age_at_kill"]
    assert LOST_AFTER - age <= cycle["detection_seconds"] < LOST_AFTER + 30
    assert report["detection_seconds"]["min"] == cycle["detection_seconds"]
    # Two per-iteration series of 3,000 steps, three validation series of 6 points.
    assert cycle["series"] == 5 and cycle["points"] == 2 * 3000 + 3 * 6
