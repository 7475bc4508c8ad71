"""The Celery worker as the dashboard sees it: its Worker row, its device, its shutdown flag.

Signals connected here run in the worker's main process (registration, a heartbeat thread
for `Worker.last_seen`, the shutdown flag); the training task runs in a pool child process.

Shutdown (SIGTERM, Ctrl-C, a deploy): Celery's warm shutdown waits for the running task to
return, and the training loop only returns when its reporter says stop. `worker_shutting_down`
fires in the main process, so the flag lives in an anonymous shared memory page created when
this module is imported (in the main process, before the pool forks): every child sees the
main process set it, and `DbReporter.should_stop()` reads it on every poll for the price of
reading a byte. The run then checkpoints and goes back to the queue (`lifecycle.release_run`).
"""

from __future__ import annotations

import logging
import mmap
import shutil
import subprocess
import sys
import threading

from celery import signals
from django.db import close_old_connections, connection
from django.utils import timezone

logger = logging.getLogger(__name__)

# How often the main process refreshes Worker.last_seen.
WORKER_HEARTBEAT_SECONDS = 15
# Queues whose consumers train runs (a worker on only `default` runs the periodic tasks).
TRAINING_QUEUES = ("gpu", "cpu", "any")

# One byte of memory shared with every process forked after this import (MAP_SHARED).
_SHUTDOWN_FLAG = mmap.mmap(-1, 1)


def shutting_down() -> bool:
    """True once this worker (or its main process) has begun a warm or cold shutdown."""
    return _SHUTDOWN_FLAG[0] != 0


def set_shutting_down(value: bool = True) -> None:
    """Raise (or, in tests, clear) the shutdown flag."""
    _SHUTDOWN_FLAG[0] = 1 if value else 0


def _nvidia_smi() -> str | None:
    """The first GPU's name and memory without initialising CUDA in this process.

    The worker's main process forks pool children; CUDA initialised before a fork is unusable
    in the child, so the main process asks nvidia-smi instead of torch.cuda.
    """
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    lines = out.splitlines()
    name, _, mem_mib = lines[0].partition(",")
    try:
        mem = f" ({float(mem_mib) / 1024:.0f} GiB)"
    except ValueError:
        mem = ""
    extra = f" x{len(lines)}" if len(lines) > 1 else ""
    return f"{name.strip()}{mem}{extra}"


def describe_device(*, init_cuda: bool = True, task_workers: int = 1) -> str:
    """What this process trains on, for people: "NVIDIA H100 80GB HBM3 (80 GiB)", "CPU (8
    threads)" or "CPU (1 thread, 4 task workers)". With init_cuda=False (a process that will
    fork) CUDA is left alone."""
    import torch

    if init_cuda:
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    else:
        gpu = _nvidia_smi()
        if gpu:
            return gpu
    threads = torch.get_num_threads()
    workers = f", {task_workers} task workers" if task_workers > 1 else ""
    return f"CPU ({threads} thread{'s' if threads != 1 else ''}{workers})"


def training_device() -> str:
    """The torch device a run trains on: cuda when available."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def worker_queues(with_gpu: bool | None = None) -> list[str]:
    """Queues a training worker consumes: cpu and any, plus gpu when this machine has one."""
    if with_gpu is None:
        import torch

        with_gpu = torch.cuda.is_available()
    return ["gpu", "any"] if with_gpu else ["cpu", "any"]


def training_worker_argv(
    queues: list[str], *, name: str = "train@%h", loglevel: str = "info"
) -> list[str]:
    """The command line of a training worker: one run at a time, fetching only when idle."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "webapp",
        "worker",
        "-Q",
        ",".join(queues),
        "-n",
        name,
        "--concurrency",
        "1",
        "--prefetch-multiplier",
        "1",
        "-O",
        "fair",
        "--disable-prefetch",
        "-l",
        loglevel,
    ]


# ------------------------------------------------------------------------------------------
# The Worker row
# ------------------------------------------------------------------------------------------
def register_worker(hostname: str, queues: list[str], device: str) -> None:
    """Create or refresh this worker's row (a restarted worker keeps its hostname)."""
    from .models import Worker

    now = timezone.now()
    Worker.objects.update_or_create(
        hostname=hostname,
        defaults={
            "device": device,
            "queues": ",".join(queues),
            "current_run": None,
            "started_at": now,
            "last_seen": now,
        },
    )


def touch_worker(hostname: str) -> None:
    from .models import Worker

    Worker.objects.filter(hostname=hostname).update(last_seen=timezone.now())


def set_current_run(hostname: str | None, run_id: int | None, device: str | None = None) -> None:
    """Record (or clear) the run a worker is training; quietly nothing for an unknown worker
    (a task called in-process by a test)."""
    from .models import Worker

    if not hostname:
        return
    fields: dict = {"current_run_id": run_id, "last_seen": timezone.now()}
    if device:
        fields["device"] = device
    try:
        Worker.objects.filter(hostname=hostname).update(**fields)
    except Exception:  # bookkeeping only: never fail a run over it
        logger.exception("could not update worker %s", hostname)


class _Heartbeat(threading.Thread):
    """Refreshes Worker.last_seen from the main process while the child trains."""

    def __init__(self, hostname: str) -> None:
        super().__init__(name="worker-heartbeat", daemon=True)
        self.hostname = hostname
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(WORKER_HEARTBEAT_SECONDS):
            try:
                close_old_connections()
                touch_worker(self.hostname)
            except Exception:
                logger.exception("worker heartbeat failed")
        connection.close()


_heartbeat: _Heartbeat | None = None


@signals.worker_ready.connect
def _on_worker_ready(sender=None, **kwargs) -> None:
    global _heartbeat
    hostname = getattr(sender, "hostname", None)
    if not hostname:
        return
    try:
        queues = sorted(q.name for q in sender.app.amqp.queues.consume_from.values())
    except Exception:
        queues = []
    if not set(queues) & set(TRAINING_QUEUES):
        return  # a maintenance worker: not a place where runs train
    try:
        register_worker(hostname, queues, describe_device(init_cuda=False))
    except Exception:
        logger.exception("could not register worker %s", hostname)
    finally:
        connection.close()  # the heartbeat thread has its own; never share one across a fork
    _heartbeat = _Heartbeat(hostname)
    _heartbeat.start()


@signals.worker_shutting_down.connect
def _on_worker_shutting_down(sender=None, **kwargs) -> None:
    # Runs inside a signal handler: set the flag and nothing else.
    set_shutting_down(True)


@signals.worker_shutdown.connect
def _on_worker_shutdown(sender=None, **kwargs) -> None:
    if _heartbeat is not None:
        _heartbeat.stopped.set()


__all__ = [
    "describe_device",
    "register_worker",
    "set_current_run",
    "set_shutting_down",
    "shutting_down",
    "training_device",
    "training_worker_argv",
    "worker_queues",
]
