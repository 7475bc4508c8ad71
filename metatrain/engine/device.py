"""Where the work runs: the device, the model's memory layout, float32 precision on a GPU, and
the CPU cores this process may keep busy."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "resolve_device",
    "prepare_model",
    "to_device",
    "float32_precision",
    "usable_cores",
    "cgroup_cpu_limit",
    "one_thread",
]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``: CUDA if available, else CPU. Asking for CUDA without one is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return dev


def uses_channels_last(model: nn.Module, device: torch.device) -> bool:
    """channels_last (NHWC) for conv nets: faster on the CPU for the paper's nets (figures in
    docs/engine.md), and on CUDA the layout cuDNN prefers."""
    del device  # faster on both device types measured
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def prepare_model(model: nn.Module, device: torch.device) -> bool:
    """Move ``model`` to ``device`` (in place); returns whether inputs should be channels_last."""
    channels_last = uses_channels_last(model, device)
    if channels_last:
        # torch's stubs leave out Module.to's memory_format.
        model.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    else:
        model.to(device=device)
    return channels_last


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A task tensor on ``device`` (once per task), in the model's memory layout."""
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@contextlib.contextmanager
def float32_precision(device: torch.device, tf32: bool = False) -> Iterator[None]:
    """Within the block, float32 convolutions and matrix products on an NVIDIA GPU run in IEEE
    float32 (``tf32=False``) or may use TF32 tensor cores (``tf32=True``); the caller's setting
    is restored afterwards. Does nothing on other devices.

    PyTorch lets cuDNN convolutions use TF32 by default on Ampere and later GPUs: their inputs
    keep 10 of float32's 23 mantissa bits. The paper's code trained in float32 (2018, before
    TF32), and a run on a GPU should compute what the same run on a CPU computes, so IEEE is
    the default. Only the per-operator settings (PyTorch's newer API) are touched: mixing them
    with the older ``allow_tf32`` flags makes PyTorch refuse to read the latter.
    """
    if device.type != "cuda":
        yield
        return
    conv = torch.backends.cudnn.conv  # type: ignore[attr-defined]  # not in torch's stubs
    matmul = torch.backends.cuda.matmul
    saved = (conv.fp32_precision, matmul.fp32_precision)
    wanted = "tf32" if tf32 else "ieee"
    conv.fp32_precision = wanted
    matmul.fp32_precision = wanted
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


def usable_cores() -> int:
    """CPU cores this process may keep busy: its affinity mask (not the machine's count),
    capped by its cgroup's CPU quota (a container started with ``--cpus 2`` on a 64-core
    host sees 64 cores in its mask; 64 task workers would then share two cores' time)."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        cores = max(1, os.cpu_count() or 1)
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, max(1, int(quota)))
    return cores


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def cgroup_cpu_limit(
    root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup"
) -> float | None:
    """This process's CPU quota in cores (quota / period of cgroup v2's ``cpu.max`` or v1's
    ``cpu.cfs_quota_us``), or None where there is none or it cannot be read."""
    text = _read(proc_cgroup)
    if text is None:
        return None
    limits: list[float] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts[0], parts[1], parts[2].lstrip("/")
        if hierarchy == "0" and controllers == "":  # cgroup v2
            for folder in (os.path.join(root, path), root):
                value = _read(os.path.join(folder, "cpu.max"))
                if value is None:
                    continue
                quota, _, period = value.partition(" ")
                if quota != "max" and _positive(quota) and _positive(period):
                    limits.append(int(quota) / int(period))
                break
        elif "cpu" in controllers.split(","):  # cgroup v1
            for folder in (
                os.path.join(root, controllers, path),
                os.path.join(root, "cpu", path),
                os.path.join(root, controllers),
                os.path.join(root, "cpu"),
            ):
                quota_us = _read(os.path.join(folder, "cpu.cfs_quota_us"))
                period_us = _read(os.path.join(folder, "cpu.cfs_period_us"))
                if quota_us is None or period_us is None:
                    continue
                if _positive(quota_us) and _positive(period_us):  # -1: no quota
                    limits.append(int(quota_us) / int(period_us))
                break
    return min(limits) if limits else None


def _positive(text: str) -> bool:
    return text.isdigit() and int(text) > 0


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """This thread on one torch thread while other threads or processes compute beside it
    (task workers, or the helper thread of ``metatrain.engine.by_hand``). A second OpenMP
    thread spin-waits after each small op and takes a core from them (docs/engine.md)."""
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)
