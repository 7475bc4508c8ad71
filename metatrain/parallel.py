"""Moved: task workers are ``metatrain.engine.pool``, worker counts ``metatrain.engine.compute``
(or ``metatrain.Compute(...).task_workers(config)``). These names stay for callers of the old
path."""

from .engine.compute import resolve_workers, useful_workers
from .engine.device import cgroup_cpu_limit, usable_cores
from .engine.pool import TaskPool, TaskWorkerError

__all__ = [
    "TaskPool",
    "TaskWorkerError",
    "cgroup_cpu_limit",
    "resolve_workers",
    "usable_cores",
    "useful_workers",
]
