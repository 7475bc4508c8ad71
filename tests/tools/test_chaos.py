"""tools/chaos.py as a user runs it: a private Redis and database, a real worker SIGKILLed
mid-run, a fresh one resuming the run; the report (JSON) says the run recovered intact. Its
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
SCRIPT = Path(settings.BASE_DIR) / "tools" / "chaos.py"


@pytest.mark.e2e
@pytest.mark.slow
def test_one_kill_cycle_recovers_the_run_without_losing_or_duplicating_points():
    argv = [sys.executable, str(SCRIPT), "--cycles", "1", "--json", "--scenario", "kill"]
    # Half the default run (3,000 iterations, a checkpoint and a validation every 500).
    argv += ["--iterations", "3000", "--checkpoint-interval", "500", "--validation-interval"]
    argv += ["500", "--lost-after", str(LOST_AFTER), "--seed", "7"]
    # On the database the suite runs on: a throwaway one on the same PostgreSQL server, if so.
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://")):
        argv += ["--database-url", url]
    done = subprocess.run(argv, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout)

    assert report["database"] == ("PostgreSQL" if "--database-url" in argv else "SQLite")
    assert report["cycles"] == 1
    assert report["recovered"] == 1
    assert report["lost"] == 0
    assert report["duplicated"] == 0
    assert report["changed"] == 0
    assert report["ok"] is True
    cycle = report["per_cycle"][0]
    assert cycle["scenario"] == "kill"
    assert cycle["detected_as"] == cycle["expected"] == "lost"
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


def test_scenarios_are_played_in_turn_and_default_to_kill():
    assert chaos.parse_args([]).scenario == ["kill"]
    assert chaos.parse_args(["--scenario", "kill,term"]).scenario == ["kill", "term"]


def test_an_unknown_scenario_is_refused_with_the_known_ones(capsys):
    with pytest.raises(SystemExit) as exit_:
        chaos.parse_args(["--scenario", "kill,melt"])
    assert exit_.value.code == 2
    assert "unknown scenario melt; known: kill, term" in capsys.readouterr().err


def test_a_new_scenario_is_one_registered_function(monkeypatch):
    monkeypatch.setattr(chaos, "SCENARIOS", dict(chaos.SCENARIOS))

    @chaos.scenario("pause", closes_as="lost", summary="SIGSTOP, SIGCONT after the takeover")
    def pause(strike: chaos.Strike):
        strike.worker.pause()
        return strike.worker.resume

    assert chaos.parse_args(["--scenario", "pause,kill"]).scenario == ["pause", "kill"]
    assert chaos.SCENARIOS["pause"].strike is pause
    assert "  pause    SIGSTOP, SIGCONT after the takeover" in chaos.build_parser().format_help()
    with pytest.raises(ValueError, match="registered already"):
        chaos.scenario("pause", closes_as="lost", summary="again")(pause)
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
