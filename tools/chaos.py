"""Fault injection against real training workers (`make chaos N=5`).

    python tools/chaos.py [--cycles N] [--scenario kill[,term,...]] [--database-url URL] [--json]
    python -m tools.chaos ...

Each cycle creates a small sine run (by default 6,000 iterations, 5-20 s on one core, a
checkpoint and a validation every 1,000), lets a real `celery worker` train it past its first
checkpoint, and strikes the worker training it at a random moment (a random iteration between
the first checkpoint and 40 % of the run, plus a random fraction of a heartbeat) with one of
the scenarios below. A fresh worker is started at once (it becomes the next cycle's victim).
The cycle measures how long the struck attempt takes to be closed (marked `lost` by the
supervisor, or `released` by a worker that hands its run back), whether the run resumes from
its checkpoint and succeeds, and whether its metric series came through intact:

- every per-iteration series has exactly the steps 1..total, every validation series exactly
  its validation steps (no gap; no duplicate, which the (run, name, step) key should forbid);
- every point stored up to the checkpoint before the strike has the same value afterwards;
- points stored after the checkpoint were trained again by the resumed attempt: how many came
  out bit-identical is reported (CPU resumes are deterministic), but not held against the run.

Scenarios (`--scenario`, comma-separated names are played in turn, one per cycle):
`kill` (SIGKILL to the worker's process group: a crashed machine, the default), `term`
(SIGTERM: a deploy; the worker checkpoints and hands the run back), `pause` (SIGSTOP to the
worker's process group, SIGCONT once its run was declared lost and resumed elsewhere: the woken
worker must change nothing) and `hang` (SIGSTOP to the process training the run only: its
worker stays alive, the run stops advancing, is declared stalled, and the worker recycles the
stuck process). A scenario is one function
registered with `@scenario(name, closes_as=..., summary=...)`: it gets a `Strike` (the worker
training the run, the run's id, the plan) at the chosen moment, does its damage, and may
return an aftermath, a function called once the struck attempt has been closed (a paused
worker would be resumed there, to check that it no longer writes anything). `closes_as` is
how the struck attempt must end (`lost` or `released`); a cycle where it ends otherwise fails.

Nothing touches the user's database or Redis. This script creates a throwaway folder, starts a
private redis-server there (`webapp.devstack.RedisServer`, on a Unix socket, persistence off),
and runs itself again as a child process whose environment names the throwaway database (a
SQLite file in that folder, or, with `--database-url postgres://...`, a new database
`NAME_chaos_XXXXXXXX` created on that server and dropped afterwards), the private Redis and
short supervision settings (RUN_LOST_AFTER_SECONDS=6, RUN_HEARTBEAT_SECONDS=1). A fresh
process is needed because Django reads the database settings once, at start-up; the child
refuses to run unless its database and broker are the ones its parent made. The child
migrates the database and plays the cycles; the workers it starts inherit its environment
(and OMP_NUM_THREADS=1).

Supervision: there is no celery beat here. The child calls the periodic tasks' own functions
(`supervise_runs`, then `dispatch_pending`) every `--tick` seconds (default 1) in a thread,
which is what beat does every 15 s in production; detection latency is therefore about
RUN_LOST_AFTER_SECONDS minus the age of the last heartbeat, plus up to one tick.

Output: one line per cycle and a summary (or `--json`: one JSON object on stdout, progress on
stderr). The exit status is 1 when a run did not recover, a point was lost or changed, a point
or a validation was duplicated; 2 for a bad option. The throwaway folder and database are
deleted afterwards (`--keep` keeps them, with the workers' logs; they are also kept, and
named, after a failure).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python tools/chaos.py` puts tools/ first, not the project
    sys.path.insert(0, str(ROOT))

from webapp.devstack import (  # noqa: E402 (needs the path above)
    DevStackError,
    RedisServer,
    WorkerProcess,
    start_training_worker,
)

SANDBOX_MARKER = ".chaos-sandbox"
WORKER_START_TIMEOUT = 120.0
# Settings of the child process and its workers (overridable by options where it matters).
HEARTBEAT_SECONDS = 1
WORKER_HEARTBEAT_SECONDS = 2
RECYCLE_GRACE_SECONDS = 3
OUTCOMES = ("lost", "released")


class CycleFailed(Exception):
    """A cycle could not go on (a timeout, a worker that died on its own)."""


# ------------------------------------------------------------------------------------------
# Scenarios
# ------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """The options a cycle needs, and every worker started so far (all stopped at the end)."""

    iterations: int
    checkpoint_interval: int
    validation_interval: int
    timeout: float
    tick: float
    rng: random.Random
    log_dir: Path
    workers: list[WorkerProcess] = field(default_factory=list)


@dataclass
class Strike:
    """What a scenario gets: the worker training the run, at the moment chosen to strike."""

    worker: WorkerProcess
    run_id: int
    plan: Plan


# A scenario does its damage and may return an aftermath, called once the struck attempt has
# been closed (lost or released), before the run is followed to its end.
Aftermath = Callable[[], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    closes_as: str  # how the struck attempt must end: "lost" or "released"
    strike: Callable[[Strike], Aftermath | None]


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    name: str, *, closes_as: str, summary: str
) -> Callable[[Callable[[Strike], Aftermath | None]], Callable[[Strike], Aftermath | None]]:
    """Register the decorated function as the scenario `name` (`--scenario name`).

    The function is called at the moment of the strike. After it returns, the struck worker
    must write nothing more to the run until the aftermath (if any) is called: the points the
    database holds then are the reference that the recovered run is checked against.
    """
    if closes_as not in OUTCOMES:
        raise ValueError(f"closes_as must be one of {OUTCOMES}")

    def register(
        strike: Callable[[Strike], Aftermath | None],
    ) -> Callable[[Strike], Aftermath | None]:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} is registered already")
        SCENARIOS[name] = Scenario(name, summary, closes_as, strike)
        return strike

    return register


@scenario("kill", closes_as="lost", summary="SIGKILL to the worker's process group: a crash")
def kill(strike: Strike) -> None:
    strike.worker.kill()


@scenario(
    "term",
    closes_as="released",
    summary="SIGTERM to the worker: a deploy; it checkpoints and hands the run back",
)
def term(strike: Strike) -> None:
    try:
        strike.worker.terminate(strike.plan.timeout)
    except DevStackError:
        raise CycleFailed(f"worker ignored SIGTERM for {strike.plan.timeout:.0f} s") from None
    strike.worker.close()  # its pool child, should one have outlived the warm shutdown


@scenario(
    "pause",
    closes_as="lost",
    summary="SIGSTOP to the worker's process group, SIGCONT once its run was given away",
)
def pause(strike: Strike) -> Aftermath:
    """A machine that froze (a long GC pause, a VM migration, a network split) and comes back
    after its run was declared lost and resumed elsewhere: woken, it must change nothing (the
    cycle's integrity checks see any point it wrote) and give up the run by itself."""
    strike.worker.pause()

    def wake() -> None:
        from webapp.experiments.models import RunAttempt

        attempt = RunAttempt.objects.filter(run_id=strike.run_id).order_by("number").first()
        strike.worker.resume()
        _wait(
            lambda: RunAttempt.objects.filter(
                pk=attempt.pk, process_done_at__isnull=False
            ).exists(),
            strike.plan.timeout,
            "the woken worker to give up its lost run",
            workers=[strike.worker],
        )

    return wake


@scenario(
    "hang",
    closes_as="lost",
    summary="SIGSTOP to the process training the run only: it hangs, its worker stays alive",
)
def hang(strike: Strike) -> Aftermath:
    """A kernel that never returns: the worker's main process keeps reporting itself alive,
    but the run stops advancing, so its heartbeat (which means progress) goes stale; the
    supervisor declares it stalled, and the worker recycles the stuck process."""
    from webapp.experiments.models import RunAttempt

    attempt = RunAttempt.objects.filter(run_id=strike.run_id).order_by("-number").first()
    os.kill(attempt.pid, signal.SIGSTOP)

    def recycled() -> None:
        _wait(
            lambda: RunAttempt.objects.filter(
                pk=attempt.pk, process_done_at__isnull=False, reason__contains="recycled"
            ).exists(),
            strike.plan.timeout,
            "the worker to recycle its stuck process",
            workers=[strike.worker],
        )
        reason = RunAttempt.objects.get(pk=attempt.pk).reason
        if not reason.startswith("stalled"):
            raise CycleFailed(f"a hung run was not called stalled: {reason}")

    return recycled


# ------------------------------------------------------------------------------------------
# The supervisor loop, workers, measurements (child process)
# ------------------------------------------------------------------------------------------
class Supervisor(threading.Thread):
    """What celery beat does in production, every `tick` seconds instead of 15: the bodies of
    the `supervise_runs` and `dispatch_pending` tasks, called in this process."""

    def __init__(self, tick: float) -> None:
        super().__init__(name="chaos-supervisor", daemon=True)
        self.tick = tick
        self.stopped = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        from django.db import connection

        from webapp.experiments.tasks import dispatch_pending, supervise_runs

        try:
            while not self.stopped.wait(self.tick):
                try:
                    supervise_runs()
                    dispatch_pending()
                except Exception as exc:  # a locked database, a broker hiccup: next tick
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    connection.close()
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(30)


@dataclass
class CycleResult:
    """What one cycle measured (the JSON output's `per_cycle` entries)."""

    cycle: int
    scenario: str
    expected: str = ""  # how the struck attempt should have been closed
    run_id: int | None = None
    killed_at_iteration: int | None = None  # the last iteration trained before the strike
    checkpoint_at_kill: int | None = None  # the file's iteration
    checkpoint_recorded_at_kill: int | None = None  # the database's (may lag the file)
    heartbeat_age_at_kill: float | None = None
    detection_seconds: float | None = None  # strike -> the attempt closed
    detected_as: str = ""
    resumed_from: int | None = None
    resume_seconds: float | None = None
    recovery_seconds: float | None = None
    status: str = ""
    attempts: int = 0
    recovered: bool = False
    series: int = 0
    points: int = 0
    points_lost: int = 0
    points_duplicated: int = 0
    points_unexpected: int = 0
    points_changed: int = 0
    replayed: int = 0
    replayed_identical: int = 0
    validations_duplicated: int = 0
    validations_missing: int = 0
    seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.recovered
            and not self.error
            and self.detected_as == self.expected
            and self.points_lost == 0
            and self.points_duplicated == 0
            and self.points_unexpected == 0
            and self.points_changed == 0
            and self.validations_duplicated == 0
            and self.validations_missing == 0
        )


def sine_config(iterations: int, checkpoint_interval: int, validation_interval: int) -> dict:
    """A small sine run (about 10 ms an iteration on one CPU thread), seed excluded."""
    import metatrain

    config = metatrain.preset(
        "sine",
        meta_iters=iterations,
        checkpoint_interval=checkpoint_interval,
        validation_interval=validation_interval,
        validation_tasks=5,
        final_eval_tasks=50,
    ).to_dict()
    config.pop("seed")
    return config


def _wait(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    workers: Sequence[WorkerProcess] = (),
    every: float = 0.1,
) -> Any:
    """Poll until predicate() is truthy and return it; CycleFailed after `timeout`, or as soon
    as none of `workers` (when given) is alive: nobody is left to make it true."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if workers and not any(w.alive for w in workers):
            names = ", ".join(w.hostname for w in workers)
            raise CycleFailed(f"worker {names} died while waiting for {what}")
        if time.monotonic() > deadline:
            raise CycleFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def start_worker(plan: Plan, label: str) -> WorkerProcess:
    """A training worker on the cpu and any queues, as `make run` starts it; returns once it
    has registered itself (its Worker row)."""
    worker = start_training_worker(
        ["cpu", "any"],
        hostname=f"chaos-{label}-{uuid.uuid4().hex[:6]}@chaos",
        env={**os.environ, "LOG_LEVEL": "INFO"},
        log_path=plan.log_dir / f"worker-{label}.log",
    )
    plan.workers.append(worker)
    try:
        worker.wait_registered(WORKER_START_TIMEOUT)
    except DevStackError as exc:
        raise CycleFailed(str(exc)) from None
    return worker


def _points(run_id: int) -> dict[tuple[str, int], float]:
    from webapp.experiments.models import MetricPoint

    rows = MetricPoint.objects.filter(run_id=run_id).values_list("name", "step", "value")
    return {(name, step): value for name, step, value in rows}


def _last_trained_iteration(run_dir: Path) -> int | None:
    """The last iteration the struck process finished (metrics.jsonl is written and flushed
    line by line, before the database sees the point)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    last = None
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            last = int(json.loads(line).get("iteration", last))
    return last


def _stored_checkpoint(run) -> int | None:
    """The iteration of the checkpoint the run row points to in storage (what any host
    resumes from), read from the file itself; None without one."""
    from metatrain.checkpoint import load_checkpoint
    from webapp.storage import download

    if not run.checkpoint_file.name:
        return None
    with tempfile.TemporaryDirectory() as folder:
        local = download(run.checkpoint_file.name, Path(folder) / "checkpoint.pt")
        return int(load_checkpoint(local)["iteration"])


def check_series(
    run_id: int, total: int, validation_interval: int, names: set[str] = frozenset()
) -> dict[str, Any]:
    """Gaps and duplicates in a finished run's series (those stored, and `names`: series seen
    earlier, which must not have vanished) and in its validations."""
    from django.db.models import Count

    from webapp.experiments.models import Evaluation, MetricPoint

    expected_validation = (
        set(range(validation_interval, total + 1, validation_interval))
        if validation_interval
        else set()
    )
    rows = MetricPoint.objects.filter(run_id=run_id)
    per_series: dict[str, list[int]] = {name: [] for name in names}
    for name, step in rows.values_list("name", "step"):
        per_series.setdefault(name, []).append(step)
    lost = 0
    unexpected = 0
    duplicated = 0
    for name, steps in per_series.items():
        expected = (
            expected_validation if name.startswith("validation_") else set(range(1, total + 1))
        )
        counts = Counter(steps)
        lost += len(expected - counts.keys())
        unexpected += len(counts.keys() - expected)
        duplicated += sum(n - 1 for n in counts.values())
    # The unique key should make this impossible; count at the database too, to be sure.
    duplicated = max(
        duplicated,
        sum(
            n - 1
            for n in rows.values("name", "step")
            .annotate(n=Count("id"))
            .filter(n__gt=1)
            .values_list("n", flat=True)
        ),
    )
    iteration_series = [n for n in per_series if not n.startswith("validation_")]
    if not iteration_series:
        lost += total  # not even one per-iteration series: everything is missing
    validations = Counter(
        Evaluation.objects.filter(run_id=run_id)
        .exclude(split="test")
        .values_list("iteration", flat=True)
    )
    return {
        "series": len(per_series),
        "points": rows.count(),
        "points_lost": lost,
        "points_duplicated": duplicated,
        "points_unexpected": unexpected,
        "validations_duplicated": sum(n - 1 for n in validations.values()),
        "validations_missing": len(expected_validation - validations.keys()),
    }


def _training_worker(plan: Plan, hostname: str) -> WorkerProcess:
    """The worker (of those this tool started) whose hostname the run records."""
    for worker in plan.workers:
        if worker.hostname == hostname and worker.alive:
            return worker
    raise CycleFailed(f"the run is trained by {hostname!r}, not by a worker of this tool")


def _jitter_bound(run, total: int) -> float:
    """The longest random wait before a strike: a heartbeat, or less when the run's measured
    speed says it would finish first (its stored iteration may be a heartbeat old)."""
    if not run.seconds_per_iteration:
        return HEARTBEAT_SECONDS
    time_left = (total - run.iteration) * run.seconds_per_iteration - HEARTBEAT_SECONDS
    return max(0.0, min(HEARTBEAT_SECONDS, time_left / 2))


def run_cycle(result: CycleResult, owner, plan: Plan) -> WorkerProcess:
    """One cycle, written into `result` as it goes (what it measured before a CycleFailed
    stays there); returns the fresh worker started after the strike."""
    from django.utils import timezone

    from webapp.experiments import run_files, services
    from webapp.experiments.models import Run, RunAttempt

    chosen = SCENARIOS[result.scenario]
    result.expected = chosen.closes_as
    index = result.cycle - 1
    started = time.monotonic()
    config = sine_config(plan.iterations, plan.checkpoint_interval, plan.validation_interval)
    experiment = services.create_experiment(
        owner, name=f"chaos cycle {index + 1}", config=config, seeds=[index]
    )
    run = experiment.runs.get()
    result.run_id = run.pk
    total = plan.iterations

    # Past the first checkpoint, then a random iteration before 40 % of the run, then a random
    # fraction of a heartbeat so the strike does not line up with the reporter's writes. The
    # stored iteration lags the training by up to a heartbeat, and a fast machine trains a
    # small run in a few heartbeats: the wait is bounded by the run's measured time left.
    target = plan.rng.randint(
        plan.checkpoint_interval + 1, max(plan.checkpoint_interval + 2, int(total * 0.4))
    )
    _wait(
        lambda: Run.objects.filter(
            pk=run.pk,
            status=Run.Status.RUNNING,
            iteration__gte=target,
            checkpoint_iteration__gte=plan.checkpoint_interval,
        ).exists(),
        plan.timeout,
        f"run {run.pk} to reach iteration {target}",
        workers=plan.workers,
    )
    time.sleep(plan.rng.uniform(0, _jitter_bound(Run.objects.get(pk=run.pk), total)))

    victim = Run.objects.get(pk=run.pk)
    if victim.status != Run.Status.RUNNING:
        raise CycleFailed(f"run {run.pk} was {victim.status} before the strike; more --iterations")
    worker = _training_worker(plan, victim.worker)
    attempt = victim.attempts
    struck_at = timezone.now()
    aftermath = chosen.strike(Strike(worker, run.pk, plan))

    # The struck worker writes nothing more: this is what the database held at the strike.
    before = Run.objects.get(pk=run.pk)
    snapshot = _points(run.pk)
    # The stored checkpoint the row points to is what a resumed attempt starts from, on any
    # host (a file written on the struck worker's disk but not yet uploaded and recorded does
    # not count); every point up to it was stored before its file was written.
    checkpoint = _stored_checkpoint(before)
    result.checkpoint_at_kill = checkpoint
    result.checkpoint_recorded_at_kill = before.checkpoint_iteration
    if checkpoint is None or checkpoint != before.checkpoint_iteration:
        raise CycleFailed(
            f"the stored checkpoint ({checkpoint}) is not the one recorded "
            f"({before.checkpoint_iteration})"
        )
    # Its metrics log, unless the struck worker removed its folder itself (a release).
    result.killed_at_iteration = (
        _last_trained_iteration(run_files.attempt_dir(run.pk, attempt)) or before.iteration
    )
    if victim.heartbeat_at is not None:
        result.heartbeat_age_at_kill = round((struck_at - victim.heartbeat_at).total_seconds(), 3)

    fresh = start_worker(plan, f"{index + 1}b")

    closed = _wait(
        lambda: RunAttempt.objects.filter(
            run_id=run.pk, number=attempt, ended_at__isnull=False
        ).first(),
        plan.timeout,
        f"attempt {attempt} of run {run.pk} to be closed (lost or released)",
    )
    result.detection_seconds = round((closed.ended_at - struck_at).total_seconds(), 3)
    result.detected_as = closed.outcome
    if aftermath is not None:
        aftermath()

    final = _wait(
        lambda: Run.objects.filter(pk=run.pk, status__in=Run.FINAL_STATUSES).first(),
        plan.timeout,
        f"run {run.pk} to finish",
        workers=[fresh],
    )
    result.status = final.status
    result.attempts = final.attempts
    resumed = RunAttempt.objects.filter(run_id=run.pk, number=attempt + 1).first()
    if resumed is not None:
        result.resumed_from = resumed.start_iteration
        result.resume_seconds = round((resumed.started_at - struck_at).total_seconds(), 3)
    if final.finished_at is not None:
        result.recovery_seconds = round((final.finished_at - struck_at).total_seconds(), 3)
    result.recovered = (
        final.status == Run.Status.SUCCEEDED
        and resumed is not None
        and resumed.start_iteration == checkpoint
        and final.iteration == total
    )

    names = {name for name, _step in snapshot}
    for key, value in check_series(run.pk, total, plan.validation_interval, names).items():
        setattr(result, key, value)
    after = _points(run.pk)
    for key, value in snapshot.items():
        now = after.get(key)  # a point gone missing is counted as lost above
        if key[1] <= checkpoint:
            # Stored before the strike and covered by the checkpoint: must be untouched.
            result.points_changed += now is not None and now != value
        else:
            # Trained again by the resumed attempt.
            result.replayed += 1
            result.replayed_identical += now == value
    result.seconds = round(time.monotonic() - started, 3)
    return fresh


# ------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------
def _cycle_line(r: CycleResult, cycles: int) -> str:
    head = f"cycle {r.cycle}/{cycles}  {r.scenario:5}"
    if r.error:
        return f"{head} run {r.run_id}: FAILED: {r.error.splitlines()[0]}"
    closed = r.detected_as or "?"
    if r.detected_as != r.expected:
        closed += f" (expected {r.expected})"
    return (
        f"{head} run {r.run_id} at iteration {r.killed_at_iteration} "
        f"(checkpoint {r.checkpoint_at_kill}): {closed} after {_fmt(r.detection_seconds)}, "
        f"resumed from {r.resumed_from} after {_fmt(r.resume_seconds)}, "
        f"{r.status} {_fmt(r.recovery_seconds)} after the strike | "
        f"{r.series} series, {r.points} points: lost {r.points_lost}, "
        f"duplicated {r.points_duplicated}, changed {r.points_changed}, "
        f"replayed {r.replayed_identical}/{r.replayed} identical" + ("" if r.ok else "  <-- NOT OK")
    )


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.2f} s" if seconds < 1 else f"{seconds:.1f} s"


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": min(values), "median": round(statistics.median(values), 3), "max": max(values)}


def summarize(results: list[CycleResult], total_seconds: float, extra: dict) -> dict[str, Any]:
    """The report: detection is the strike -> the attempt marked lost (by the supervisor);
    release is the strike -> the run back in the queue (the worker hands it back itself)."""

    def times(outcome: str) -> list[float]:
        return [
            r.detection_seconds
            for r in results
            if r.expected == outcome and r.detection_seconds is not None
        ]

    return {
        "cycles": len(results),
        "recovered": sum(r.recovered for r in results),
        "lost": sum(r.points_lost for r in results),
        "duplicated": sum(r.points_duplicated for r in results),
        "unexpected": sum(r.points_unexpected for r in results),
        "changed": sum(r.points_changed for r in results),
        "validations_duplicated": sum(r.validations_duplicated for r in results),
        "validations_missing": sum(r.validations_missing for r in results),
        "replayed": sum(r.replayed for r in results),
        "replayed_identical": sum(r.replayed_identical for r in results),
        "detection_seconds": _spread(times("lost")),
        "release_seconds": _spread(times("released")),
        "detection_by_scenario": {
            name: _spread(
                [
                    r.detection_seconds
                    for r in results
                    if r.scenario == name and r.detection_seconds is not None
                ]
            )
            for name in sorted({r.scenario for r in results})
        },
        "total_seconds": round(total_seconds, 1),
        "ok": bool(results) and all(r.ok for r in results),
        **extra,
        "per_cycle": [asdict(r) for r in results],
    }


def summary_text(s: dict[str, Any]) -> str:
    d, r = s["detection_seconds"], s["release_seconds"]
    played = Counter(c["scenario"] for c in s["per_cycle"])
    kinds = ", ".join(f"{name} x{n}" for name, n in sorted(played.items()))
    lines = [
        f"chaos: {s['recovered']}/{s['cycles']} runs recovered ({kinds}); "
        f"points lost {s['lost']}, duplicated {s['duplicated']}, changed {s['changed']}; "
        f"validations duplicated {s['validations_duplicated']}, "
        f"missing {s['validations_missing']}"
        + (f"; steps that should not exist {s['unexpected']}" if s["unexpected"] else "")
    ]
    if d["min"] is not None:
        lines.append(
            f"detection (strike -> marked lost): min {_fmt(d['min'])}, "
            f"median {_fmt(d['median'])}, max {_fmt(d['max'])}"
        )
    if r["min"] is not None:
        lines.append(
            f"release (SIGTERM -> checkpointed, back in the queue): min {_fmt(r['min'])}, "
            f"median {_fmt(r['median'])}, max {_fmt(r['max'])}"
        )
    for name, spread in s["detection_by_scenario"].items():
        if spread["min"] is not None:
            lines.append(
                f"  {name:5} closed after: min {_fmt(spread['min'])}, "
                f"median {_fmt(spread['median'])}, max {_fmt(spread['max'])}"
            )
    lines += [
        f"replayed after the checkpoint: {s['replayed_identical']}/{s['replayed']} points "
        f"bit-identical",
        f"total {s['total_seconds']:.0f} s; {s['database']}; "
        f"RUN_LOST_AFTER_SECONDS={s['lost_after_seconds']}, "
        f"RUN_HEARTBEAT_SECONDS={HEARTBEAT_SECONDS}, supervisor tick {s['tick_seconds']} s, "
        f"{s['iterations']} iterations, checkpoint every {s['checkpoint_interval']}, "
        f"seed {s['seed']}",
        "OK" if s["ok"] else "FAILED",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------
def _scenarios(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(unknown) or repr(value)}; known: {', '.join(SCENARIOS)}"
        )
    return names


def _postgres_url(value: str) -> str:
    if urlsplit(value).scheme not in ("postgres", "postgresql", "pgsql"):
        raise argparse.ArgumentTypeError("--database-url takes a postgres:// URL")
    if not urlsplit(value).path.strip("/"):
        raise argparse.ArgumentTypeError("--database-url needs a database name")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/chaos.py",
        description=(
            "Strike training workers at random moments against a throwaway database and "
            "Redis; report detection time, recovery and metric integrity."
        ),
        epilog="scenarios:\n" + "\n".join(f"  {s.name:8} {s.summary}" for s in SCENARIOS.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cycles", type=int, default=3, help="strike/recover cycles (3)")
    parser.add_argument(
        "--scenario",
        type=_scenarios,
        default=["kill"],
        metavar="NAME[,NAME...]",
        help="what to do to the worker; several names are played in turn (kill)",
    )
    parser.add_argument(
        "--database-url",
        type=_postgres_url,
        default=None,
        help="a PostgreSQL server (postgres://user@host:port/NAME) on which to create, and "
        "afterwards drop, a throwaway database NAME_chaos_XXXXXXXX (default: a SQLite file "
        "in the throwaway folder)",
    )
    parser.add_argument(
        "--iterations", type=int, default=6000, help="meta-iterations per run (6000)"
    )
    parser.add_argument(
        "--checkpoint-interval", type=int, default=1000, help="iterations per checkpoint (1000)"
    )
    parser.add_argument(
        "--validation-interval", type=int, default=1000, help="iterations per validation (1000)"
    )
    parser.add_argument(
        "--lost-after", type=int, default=6, help="RUN_LOST_AFTER_SECONDS for the stack (6)"
    )
    parser.add_argument(
        "--tick", type=float, default=1.0, help="seconds between supervisor rounds (1)"
    )
    parser.add_argument(
        "--timeout", type=float, default=240.0, help="longest wait for any one step (240 s)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for the strike moments")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--keep", action="store_true", help="keep the throwaway folder and DB")
    parser.add_argument("--sandbox", default=None, help=argparse.SUPPRESS)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cycles < 1:
        parser.error("--cycles must be at least 1")
    if args.checkpoint_interval < 1 or args.iterations < 3 * args.checkpoint_interval:
        parser.error("--iterations must be at least 3 checkpoint intervals")
    return args


def _child_argv(args: argparse.Namespace, folder: Path, seed: int) -> list[str]:
    argv = [sys.executable, "-m", "tools.chaos", "--sandbox", str(folder), "--seed", str(seed)]
    argv += ["--scenario", ",".join(args.scenario)]
    for name in ("cycles", "iterations", "checkpoint_interval", "validation_interval"):
        argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for name in ("lost_after", "tick", "timeout"):
        argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.json:
        argv.append("--json")
    return argv


# ------------------------------------------------------------------------------------------
# Parent: the throwaway folder, database and Redis, and the child
# ------------------------------------------------------------------------------------------
class ThrowawayPostgres:
    """A database created for one chaos run on the server of `url`, dropped afterwards."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.name = f"{parts.path.strip('/')[:40]}_chaos_{uuid.uuid4().hex[:8]}"
        self.url = urlunsplit(parts._replace(path=f"/{self.name}"))
        # CREATE and DROP DATABASE run from the server's maintenance database.
        self._admin_url = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))

    def _execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self._admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    def create(self) -> None:
        self._execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        self._execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def orchestrate(args: argparse.Namespace, err=sys.stderr) -> int:
    """Make the throwaway stack, run the cycles in a child process, clean up; the exit code."""
    base = None if len(tempfile.gettempdir()) < 60 else "/tmp"  # Unix socket paths are short
    folder = Path(tempfile.mkdtemp(prefix="chaos-", dir=base))
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    database = ThrowawayPostgres(args.database_url) if args.database_url else None
    marker = {"database": database.name if database else str(folder / "db.sqlite3")}
    (folder / SANDBOX_MARKER).write_text(json.dumps(marker))
    redis_server = RedisServer(folder, socket=folder / "redis.sock")
    code = 1
    created = False
    try:
        if database is not None:
            database.create()
            created = True
        redis_server.start()
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "webapp.settings",
            "DATABASE_URL": database.url if database else f"sqlite:///{folder / 'db.sqlite3'}",
            "CELERY_BROKER_URL": redis_server.url,
            "RUNS_ROOT": str(folder / "runs"),
            "MEDIA_ROOT": str(folder / "media"),
            "DATASETS_ROOT": str(folder / "datasets"),
            "DATASET_CACHE_ROOT": str(folder / "dataset-cache"),
            "RUN_LOST_AFTER_SECONDS": str(args.lost_after),
            # A worker looks for stuck pool children as often as it reports itself alive.
            "WORKER_HEARTBEAT_SECONDS": str(WORKER_HEARTBEAT_SECONDS),
            "RUN_RECYCLE_GRACE_SECONDS": str(RECYCLE_GRACE_SECONDS),
            "RUN_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
            "RUN_MAX_ATTEMPTS": "3",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "WORKER_TORCH_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            # This process's own log (runs lost, requeued) would drown the report.
            "LOG_LEVEL": os.environ.get("CHAOS_LOG_LEVEL", "ERROR"),
        }
        if not args.json:
            where = f"database {database.name}" if database else "SQLite"
            print(f"chaos: throwaway stack in {folder}, {where} (seed {seed})", file=err)
        child = subprocess.Popen(_child_argv(args, folder, seed), cwd=ROOT, env=env)
        try:
            code = child.wait()
        except KeyboardInterrupt:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(60)  # it stops its workers on the same Ctrl-C
            code = 130
    finally:
        redis_server.stop()
        if args.keep or code:
            kept = f" and database {database.name}" if created else ""
            print(f"chaos: kept {folder}{kept} (workers' logs, database)", file=err)
        else:
            shutil.rmtree(folder, ignore_errors=True)
            if created:
                database.drop()
    return code


# ------------------------------------------------------------------------------------------
# Child: the cycles
# ------------------------------------------------------------------------------------------
def check_sandbox(folder: Path) -> None:
    """Refuse to run anywhere but on the database and broker the parent made for `folder`:
    never the real ones. Raises SystemExit with the reason."""
    from django.conf import settings

    marker = folder / SANDBOX_MARKER
    if not marker.is_file():
        raise SystemExit(f"{folder} is not a chaos sandbox (run tools/chaos.py)")
    expected = json.loads(marker.read_text())["database"]
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        name = Path(str(db["NAME"])).resolve()
        inside = folder.resolve() in name.parents and str(name) == str(Path(expected).resolve())
    else:
        inside = db["NAME"] == expected and "_chaos_" in expected
    if not inside:
        raise SystemExit(f"refusing to run: the database {db['NAME']} is not this sandbox's")
    if str(folder) not in settings.CELERY_BROKER_URL:
        raise SystemExit(f"refusing to run: the broker is outside {folder}")


def play(args: argparse.Namespace) -> int:
    """Set Django up on the sandbox's settings, play the cycles, print the report."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    folder = Path(args.sandbox)
    check_sandbox(folder)
    out = sys.stderr if args.json else sys.stdout
    began = time.monotonic()
    call_command("migrate", interactive=False, verbosity=0)
    owner = get_user_model().objects.create_user(username="chaos")
    plan = Plan(
        iterations=args.iterations,
        checkpoint_interval=args.checkpoint_interval,
        validation_interval=args.validation_interval,
        timeout=args.timeout,
        tick=args.tick,
        rng=random.Random(args.seed),
        log_dir=folder,
    )
    supervisor = Supervisor(args.tick)
    supervisor.start()
    results: list[CycleResult] = []
    try:
        start_worker(plan, "1a")
        for index in range(args.cycles):
            result = CycleResult(
                cycle=index + 1, scenario=args.scenario[index % len(args.scenario)]
            )
            try:
                run_cycle(result, owner, plan)
            except CycleFailed as exc:
                result.error = str(exc)
            results.append(result)
            print(_cycle_line(result, args.cycles), file=out, flush=True)
            if result.error and index + 1 < args.cycles:
                _recover_from_failure(plan, index)
    except CycleFailed as exc:  # no worker would start: nothing more to try
        results.append(CycleResult(cycle=len(results) + 1, scenario="-", error=str(exc)))
        print(_cycle_line(results[-1], args.cycles), file=out, flush=True)
    finally:
        supervisor.stop()
        for worker in plan.workers:
            worker.close()
    db = settings.DATABASES["default"]
    summary = summarize(
        results,
        time.monotonic() - began,
        {
            "scenario": args.scenario,
            "database": "PostgreSQL" if db["ENGINE"].endswith("postgresql") else "SQLite",
            "seed": args.seed,
            "iterations": args.iterations,
            "checkpoint_interval": args.checkpoint_interval,
            "lost_after_seconds": settings.RUN_LOST_AFTER_SECONDS,
            "tick_seconds": args.tick,
            "supervisor_errors": supervisor.errors[-10:],
        },
    )
    print(json.dumps(summary) if args.json else summary_text(summary), flush=True)
    return 0 if summary["ok"] else 1


def _recover_from_failure(plan: Plan, index: int) -> WorkerProcess:
    """After a failed cycle: cancel what is left, stop every worker, start a fresh one."""
    from webapp.experiments import services
    from webapp.experiments.models import Run

    for run in Run.objects.filter(status__in=[*Run.ACTIVE_STATUSES, Run.Status.LOST]):
        services.request_cancel(run)
    for worker in plan.workers:
        worker.close()
    return start_worker(plan, f"{index + 2}a")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return play(args) if args.sandbox else orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
