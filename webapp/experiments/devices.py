"""What a worker trains on, as people and the scheduler need to know it.

A GPU worker is pinned to one GPU (`manage.py run_worker --gpu N` sets CUDA_VISIBLE_DEVICES=N,
CUDA_DEVICE_ORDER=PCI_BUS_ID so CUDA and NVML number GPUs alike, and METATRAIN_WORKER_GPU=N).
Its main process reads the GPU through NVML (nvidia-ml-py), never through CUDA: CUDA initialised
before Celery forks its pool is unusable in the children.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

GPU_ENV = "METATRAIN_WORKER_GPU"


def pinned_gpu() -> int | None:
    """The physical GPU index this worker was started for, if any."""
    raw = os.environ.get(GPU_ENV, "").strip()
    if raw.isdigit():
        return int(raw)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    first = visible.split(",")[0].strip() if visible else ""
    return int(first) if first.isdigit() else None


def gpu_stats(index: int | None) -> dict[str, Any] | None:
    """Name, memory used/total (MiB) and utilisation (%) of one GPU from NVML; None without a
    GPU, without the NVIDIA driver, or without nvidia-ml-py."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, no GPU: NVMLError and its many subclasses
        return None
    try:
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
        handle = pynvml.nvmlDeviceGetHandleByIndex(index or 0)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        utilisation = pynvml.nvmlDeviceGetUtilizationRates(handle)
        name = pynvml.nvmlDeviceGetName(handle)
        return {
            "index": index or 0,
            "name": name.decode() if isinstance(name, bytes) else str(name),
            "memory_used_mib": round(memory.used / 2**20),
            "memory_total_mib": round(memory.total / 2**20),
            "utilization_percent": int(utilisation.gpu),
        }
    except Exception:
        logger.warning("could not read GPU %s through NVML", index, exc_info=True)
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def cpu_stats() -> dict[str, Any]:
    """Cores this process may use and the machine's one-minute load average."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {"cores": cores, "load1": load}


def stats() -> dict[str, Any]:
    """The worker's device as the workers page shows it: its GPU, else its CPU."""
    gpu = gpu_stats(pinned_gpu())
    return {"gpu": gpu} if gpu else {"cpu": cpu_stats()}


def free_gpu_memory_bytes() -> int | None:
    """Free memory of the GPU this process trains on (None without CUDA). Called in a pool
    child, which may initialise CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info()
    return int(free)
