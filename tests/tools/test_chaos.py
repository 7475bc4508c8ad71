"""tools/chaos.py as a user runs it: a private Redis and database, real workers killed, paused
and hung mid-run, fresh ones resuming the runs; the report (JSON) says each run recovered
intact. Its
options, scenario registry and sandbox guard are checked in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tools import chaos

LOST_AFTER = 6
# celery beat's interval for the supervisor in production (webapp/celery.py).
PRODUCTION_TICK = 15
SCRIPT = Path(settings.BASE_DIR) / "tools" / "chaos.py"


@pytest.mark.e2e
@pytest.mark.slow
def test_a_killed_a_paused_and_a_hung_worker_each_lose_nothing_at_the_production_tick():
    """One cycle per fault kind, the supervisor ticking every 15 s as celery beat does in
    production, on the database the suite runs on (a throwaway one on the same PostgreSQL
    server in CI)."""
    argv = [sys.executable, str(SCRIPT), "--cycles", "3", "--json"]
    argv += ["--scenario", "kill,pause,hang", "--tick", str(PRODUCTION_TICK)]
    # The default run, 6,000 iterations with a checkpoint and a validation every 1,000: a fast
    # machine (0.8 ms an iteration) trains a quarter of it in about one heartbeat, too little
    # to strike it mid-run.
    argv += ["--iterations", "6000", "--checkpoint-interval", "1000", "--validation-interval"]
    argv += ["1000", "--lost-after", str(LOST_AFTER), "--seed", "7"]
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://")):
        argv += ["--database-url", url]
    done = subprocess.run(argv, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout)

    assert report["database"] == ("PostgreSQL" if "--database-url" in argv else "SQLite")
    assert (report["cycles"], report["recovered"]) == (3, 3)
    assert report["lost"] == report["duplicated"] == report["changed"] == 0
    assert report["validations_duplicated"] == report["validations_missing"] == 0
    assert report["ok"] is True
    assert [c["scenario"] for c in report["per_cycle"]] == ["kill", "pause", "hang"]
    assert set(report["detection_by_scenario"]) == {"kill", "pause", "hang"}
    for cycle in report["per_cycle"]:
        assert cycle["detected_as"] == cycle["expected"] == "lost"
        assert cycle["status"] == "succeeded"
        assert cycle["attempts"] == 2
        # Resumed from the checkpoint stored (and recorded) before the strike.
        assert cycle["resumed_from"] == cycle["checkpoint_at_kill"] >= 1000
        assert cycle["checkpoint_at_kill"] == cycle["checkpoint_recorded_at_kill"]
        assert cycle["killed_at_iteration"] >= cycle["checkpoint_at_kill"]
        # Not before the heartbeat was LOST_AFTER seconds old; at most a tick (and the load of
        # this machine) later.
        age = cycle["heartbeat_age_at_kill"]
        assert LOST_AFTER - age <= cycle["detection_seconds"] < LOST_AFTER + PRODUCTION_TICK + 30
        # Two per-iteration series of 6,000 steps, three validation series of 6 points.
        assert cycle["series"] == 5 and cycle["points"] == 2 * 6000 + 3 * 6


def test_scenarios_are_played_in_turn_and_default_to_kill():
    assert chaos.parse_args([]).scenario == ["kill"]
    assert chaos.parse_args(["--scenario", "kill,term"]).scenario == ["kill", "term"]


def test_an_unknown_scenario_is_refused_with_the_known_ones(capsys):
    with pytest.raises(SystemExit) as exit_:
        chaos.parse_args(["--scenario", "kill,melt"])
    assert exit_.value.code == 2
    assert "unknown scenario melt; known: kill, term, pause, hang" in capsys.readouterr().err


def test_a_new_scenario_is_one_registered_function(monkeypatch):
    monkeypatch.setattr(chaos, "SCENARIOS", dict(chaos.SCENARIOS))

    @chaos.scenario("nap", closes_as="lost", summary="SIGSTOP, SIGCONT after the takeover")
    def nap(strike: chaos.Strike):
        strike.worker.pause()
        return strike.worker.resume

    assert chaos.parse_args(["--scenario", "nap,kill"]).scenario == ["nap", "kill"]
    assert chaos.SCENARIOS["nap"].strike is nap
    assert "  nap      SIGSTOP, SIGCONT after the takeover" in chaos.build_parser().format_help()
    with pytest.raises(ValueError, match="registered already"):
        chaos.scenario("nap", closes_as="lost", summary="again")(nap)
    with pytest.raises(ValueError, match="closes_as"):
        chaos.scenario("melt", closes_as="vanished", summary="?")


def test_a_cycle_closed_otherwise_than_its_scenario_expects_is_not_ok():
    result = chaos.CycleResult(cycle=1, scenario="kill", expected="lost", recovered=True)
    result.detected_as = "lost"
    assert result.ok
    result.detected_as = "released"
    assert not result.ok


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--cycles", "0"], "--cycles must be at least 1"),
        (["--iterations", "2000"], "at least 3 checkpoint intervals"),
        (["--database-url", "sqlite:///db.sqlite3"], "takes a postgres:// URL"),
        (["--database-url", "postgres://postgres@127.0.0.1:5432"], "needs a database name"),
    ],
)
def test_bad_options_exit_2_with_the_reason(capsys, options, message):
    with pytest.raises(SystemExit) as exit_:
        chaos.parse_args(options)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_the_child_gets_every_option_of_its_parent(tmp_path):
    options = ["--cycles", "4", "--scenario", "term,kill", "--iterations", "900"]
    options += ["--checkpoint-interval", "300", "--validation-interval", "100"]
    options += ["--lost-after", "9", "--tick", "0.5", "--timeout", "60", "--json"]
    parent = chaos.parse_args(options)
    argv = chaos._child_argv(parent, tmp_path, seed=11)
    assert argv[1:3] == ["-m", "tools.chaos"]
    child = chaos.parse_args(argv[3:])
    assert vars(child) == {**vars(parent), "sandbox": str(tmp_path), "seed": 11}


def test_a_throwaway_postgres_database_is_named_after_the_given_one():
    database = chaos.ThrowawayPostgres(
        "postgres://ci:pw@db.example:5433/metatrain_ci?sslmode=require"
    )
    assert database.name.startswith("metatrain_ci_chaos_") and len(database.name) == 27
    assert database.url == f"postgres://ci:pw@db.example:5433/{database.name}?sslmode=require"


def test_the_child_refuses_a_folder_that_is_not_a_sandbox(tmp_path):
    with pytest.raises(SystemExit, match="not a chaos sandbox"):
        chaos.check_sandbox(tmp_path)


def test_the_child_refuses_a_database_outside_its_sandbox(tmp_path):
    # This test process's database (the suite's) is not the one the marker names.
    (tmp_path / chaos.SANDBOX_MARKER).write_text(json.dumps({"database": "elsewhere"}))
    with pytest.raises(SystemExit, match="refusing to run: the database"):
        chaos.check_sandbox(tmp_path)
