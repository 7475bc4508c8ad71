"""`manage.py run_worker`: start a training worker, one per GPU, holding one run or several.

    manage.py run_worker                          # this host's CPU (or its only GPU)
    manage.py run_worker --gpu 1                  # pinned to GPU 1, named train-gpu1@<host>
    manage.py run_worker --gpu 1 --runs-per-gpu 4 # four runs at once on GPU 1, one process each

The worker is pinned with CUDA_VISIBLE_DEVICES (and CUDA_DEVICE_ORDER=PCI_BUS_ID, so CUDA's
numbering is nvidia-smi's), so the runs it trains see that GPU alone. With several runs per GPU,
a process starts another run only while the GPU keeps WORKER_GPU_MEMORY_MARGIN_MB free; the run
otherwise goes back to the queue for another worker. The command replaces itself with the
Celery worker, so signals (SIGTERM: checkpoint and hand the runs back) reach it directly.
"""

from __future__ import annotations

import os
import socket

from django.core.management.base import BaseCommand, CommandError

from webapp.experiments.devices import GPU_ENV
from webapp.experiments.workers import training_worker_argv, worker_queues

QUEUES = ("gpu", "cpu", "any")


def gpu_count() -> int:
    """GPUs on this host, from NVML (no CUDA initialised here), else torch."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver or no nvidia-ml-py: ask torch
        import torch

        return torch.cuda.device_count()


def worker_command(
    *,
    gpu: int | None,
    runs_per_gpu: int,
    queues: list[str] | None,
    host: str,
    loglevel: str = "info",
    gpus_here: int = 0,
) -> tuple[list[str], dict[str, str]]:
    """The worker's command line and the environment variables it adds; CommandError on a bad
    option, saying what to give instead."""
    if runs_per_gpu < 1:
        raise CommandError("--runs-per-gpu must be 1 or more")
    if gpu is not None:
        if gpu < 0:
            raise CommandError("--gpu must be a GPU index: 0, 1, ...")
        if gpu >= gpus_here:
            raise CommandError(
                f"--gpu {gpu}: this host has {gpus_here} GPU{'s' if gpus_here != 1 else ''}"
                + (f" (0 to {gpus_here - 1})" if gpus_here else "")
            )
    elif runs_per_gpu != 1:
        raise CommandError(
            "--runs-per-gpu needs --gpu; on a CPU host start one worker per group of cores"
        )
    if queues is None:
        queues = ["gpu", "any"] if gpu is not None else worker_queues()
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown or not queues:
        raise CommandError(f"--queues: unknown queue(s) {unknown}; use {', '.join(QUEUES)}")
    env: dict[str, str] = {}
    if gpu is not None:
        env = {
            "CUDA_VISIBLE_DEVICES": str(gpu),
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            GPU_ENV: str(gpu),
        }
        name = f"train-gpu{gpu}@{host}"
    else:
        name = f"train-cpu@{host}" if "gpu" not in queues else f"train@{host}"
    argv = training_worker_argv(queues, name=name, loglevel=loglevel, concurrency=runs_per_gpu)
    return argv, env


class Command(BaseCommand):
    help = "Start a training worker: one per GPU (--gpu N), holding K runs (--runs-per-gpu K)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--gpu", type=int, default=None, help="the GPU index to pin to")
        parser.add_argument(
            "--runs-per-gpu",
            type=int,
            default=None,
            help="runs trained at once on the GPU, one process each (default $RUNS_PER_GPU with "
            "--gpu, else 1)",
        )
        parser.add_argument(
            "--queues",
            default=None,
            help="comma-separated queues (default gpu,any with --gpu, else cpu,any or gpu,any)",
        )
        parser.add_argument("--hostname", default=socket.gethostname(), help="the host's name")
        parser.add_argument("--loglevel", default="info")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="print the command and environment, start nothing",
        )

    def handle(self, *args, **options) -> None:
        queues = [q.strip() for q in options["queues"].split(",")] if options["queues"] else None
        gpu = options["gpu"]
        runs = options["runs_per_gpu"]
        if runs is None:
            # The environment's default applies to GPU workers only, so one .env serves both.
            raw = os.environ.get("RUNS_PER_GPU", "") if gpu is not None else ""
            if raw and not raw.strip().isdigit():
                raise CommandError(f"RUNS_PER_GPU={raw!r} is not a whole number")
            runs = int(raw) if raw else 1
        argv, env = worker_command(
            gpu=gpu,
            runs_per_gpu=runs,
            queues=queues,
            host=options["hostname"],
            loglevel=options["loglevel"],
            gpus_here=gpu_count() if gpu is not None else 0,
        )
        if options["dry_run"]:
            for key, value in sorted(env.items()):
                self.stdout.write(f"{key}={value}")
            self.stdout.write(" ".join(argv))
            return
        os.execvpe(argv[0], argv, {**os.environ, **env})
