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
import sys
import threading
import time

from celery import signals
from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from . import devices

logger = logging.getLogger(__name__)

# How often the main process refreshes Worker.last_seen (and its device's figures) and looks
# for pool children stuck in lost runs (WORKER_HEARTBEAT_SECONDS, default 15).
WORKER_HEARTBEAT_SECONDS = settings.WORKER_HEARTBEAT_SECONDS
# How often it removes this host's scratch folders of attempts that are over.
SWEEP_SECONDS = 10 * 60
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


def describe_device(*, init_cuda: bool = True, task_workers: int = 1) -> str:
    """What this process trains on, for people: "NVIDIA H100 80GB HBM3 (80 GiB)", "CPU (8
    threads)" or "CPU (1 thread, 4 task workers)". With init_cuda=False (a process that will
    fork) CUDA is left alone and the GPU is read through NVML."""
    import torch

    if init_cuda:
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    else:
        gpu = devices.gpu_stats(devices.pinned_gpu())
        if gpu:
            return f"{gpu['name']} ({gpu['memory_total_mib'] / 1024:.0f} GiB)"
    threads = torch.get_num_threads()
    workers = f", {task_workers} task workers" if task_workers > 1 else ""
    return f"CPU ({threads} thread{'s' if threads != 1 else ''}{workers})"


def training_device() -> str:
    """The torch device a run trains on: the GPU this worker was started for (the only one it
    sees), else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def has_room_for_another_run(hostname: str) -> bool:
    """Whether this process may start one more run: always on a CPU or when the worker holds
    no other run; on a GPU shared with the worker's other runs, only while its free memory
    stays above WORKER_GPU_MEMORY_MARGIN_MB."""
    from .models import Run

    if not hostname or not Run.objects.filter(worker=hostname, status=Run.Status.RUNNING).exists():
        return True
    free = devices.free_gpu_memory_bytes()
    return free is None or free >= settings.WORKER_GPU_MEMORY_MARGIN_MB * 2**20


def sweep_run_folders() -> list:
    """Remove this host's scratch folders of attempts that are over (best effort)."""
    from . import run_files
    from .models import Run

    def is_current(run_id: int, attempt: int) -> bool:
        return Run.objects.filter(pk=run_id, status=Run.Status.RUNNING, attempts=attempt).exists()

    try:
        return run_files.sweep_local(is_current)
    except Exception:  # housekeeping: never fail a task or a heartbeat over it
        logger.warning("could not sweep %s", settings.RUNS_ROOT, exc_info=True)
        return []


def worker_queues(with_gpu: bool | None = None) -> list[str]:
    """Queues a training worker consumes: cpu and any, plus gpu when this machine has one."""
    if with_gpu is None:
        import torch

        with_gpu = torch.cuda.is_available()
    return ["gpu", "any"] if with_gpu else ["cpu", "any"]


def training_worker_argv(
    queues: list[str], *, name: str = "train@%h", loglevel: str = "info", concurrency: int = 1
) -> list[str]:
    """The command line of a training worker: `concurrency` runs at once (one process each),
    each process fetching a message only when it is idle."""
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
        str(concurrency),
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
def register_worker(hostname: str, queues: list[str], device: str, *, concurrency: int = 1) -> None:
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
            "gpu_index": devices.pinned_gpu(),
            "concurrency": concurrency,
            "stats": devices.stats(),
        },
    )


def touch_worker(hostname: str) -> None:
    from .models import Worker

    Worker.objects.filter(hostname=hostname).update(last_seen=timezone.now(), stats=devices.stats())


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
        from .watchdog import recycle_stuck_processes

        last_sweep = -float("inf")
        while not self.stopped.wait(WORKER_HEARTBEAT_SECONDS):
            try:
                close_old_connections()
                touch_worker(self.hostname)
                recycle_stuck_processes(self.hostname)
                if time.monotonic() - last_sweep >= SWEEP_SECONDS:
                    last_sweep = time.monotonic()
                    sweep_run_folders()
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
        concurrency = int(getattr(sender, "concurrency", 1) or 1)
        register_worker(hostname, queues, describe_device(init_cuda=False), concurrency=concurrency)
        sweep_run_folders()
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
    "has_room_for_another_run",
    "register_worker",
    "set_current_run",
    "set_shutting_down",
    "shutting_down",
    "sweep_run_folders",
    "training_device",
    "training_worker_argv",
    "worker_queues",
]
