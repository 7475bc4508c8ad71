"""Where and how a run computes: one ``Compute`` object, and the plan it makes for a run.

``Compute`` holds the five settings train, evaluate, the command line and the dashboard pass
through (device, task workers, CUDA graphs, stacked tasks, TF32); none of them changes a
result beyond rounding (``stack_tasks``, ``tf32``) and most not at all. ``plan_training`` and
``plan_evaluation`` turn them, the config and the network into the decisions of one run: how
many task worker processes to start, which tasks go to them, which runner adapts the tasks,
and how the inner step is computed.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from torch import nn

from ..algorithms import algorithm_of
from ..config import Config
from ..losses import Loss
from ..models import build_model
from .device import resolve_device, usable_cores
from .stacked import stackable

__all__ = ["Compute", "Plan", "resolve_workers", "useful_workers", "RunnerKind", "compute_from"]

RunnerKind = Literal["serial", "pool", "stacked"]


def resolve_workers(workers: int | str | None, device: torch.device) -> int:
    """The number of task workers to start: ``"auto"``/None is every usable core on CPU;
    always 1 on a GPU, where one process keeps the device busy."""
    if device.type != "cpu":
        return 1
    if workers is None or workers == "auto":
        return usable_cores()
    count = int(workers)
    if count < 1:
        raise ValueError(f"workers must be at least 1, got {count}")
    return count


def _stacks(config: Config, model: nn.Module, loss: Loss) -> bool:
    return loss.has_per_task and stackable(model, config.inner_optimizer)


def useful_workers(config: Config, count: int, stack_tasks: bool = True) -> int:
    """The task workers a training run of ``config`` keeps busy: ``count``, or 1 where its tasks
    are adapted stacked instead (a regression MLP with SGD, ``metatrain.engine.stacked``: far
    faster than workers, for training and evaluation alike). Otherwise evaluation tasks always
    run in the workers (training tasks too when they do not share Adam's moments)."""
    if count <= 1:
        return count
    if stack_tasks and _stacks(config, build_model(config), algorithm_of(config).loss(config)):
        return 1
    return count


@dataclass(frozen=True)
class Plan:
    """How one run computes (see ``Compute.plan_training``)."""

    device: torch.device
    workers: int  # task worker processes to start (1: none)
    training: RunnerKind  # who adapts a meta-batch's tasks
    evaluation: RunnerKind  # who adapts validation or evaluation tasks
    helper_thread: bool  # serial steps may use a helper thread (a spare core)
    cuda_graphs: bool
    tf32: bool


@dataclass(frozen=True)
class Compute:
    """Where and how to compute. ``device``: "cpu", "cuda" (or "cuda:1"), None for CUDA if
    available. ``workers``: task worker processes on the CPU, a positive int or "auto" (one
    per usable core); ignored on a GPU; the results are the same as with 1. ``cuda_graphs``:
    on a GPU, replay each inner step from a captured CUDA graph. ``stack_tasks``: adapt a
    regression MLP's tasks many at once with SGD (the same up to rounding). ``tf32``: on an
    NVIDIA GPU, let convolutions and matrix products use TF32 (default IEEE float32)."""

    device: str | None = None
    workers: int | str = 1
    cuda_graphs: bool = True
    stack_tasks: bool = True
    tf32: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.device, torch.device):
            object.__setattr__(self, "device", str(self.device))
        if self.workers is None:
            object.__setattr__(self, "workers", "auto")
        if isinstance(self.workers, bool) or not (
            self.workers == "auto" or (isinstance(self.workers, int) and self.workers >= 1)
        ):
            raise ValueError(f"workers must be 'auto' or at least 1, got {self.workers!r}")

    def resolve_device(self) -> torch.device:
        """The device to run on (an error where CUDA is asked for and missing)."""
        return resolve_device(self.device)

    def cores(self, device: torch.device | None = None) -> int:
        """Task workers ``workers`` asks for on ``device`` (1 on a GPU)."""
        return resolve_workers(self.workers, device or self.resolve_device())

    def task_workers(self, config: Config) -> int:
        """The task worker processes a training run of ``config`` would keep busy (for a
        dashboard that names them before the run starts)."""
        return useful_workers(config, self.cores(), self.stack_tasks)

    def plan_training(self, config: Config, model: nn.Module) -> Plan:
        """The plan of a training run of ``config`` with ``model`` (and its validations).

        Validation tasks always qualify for the task workers; a meta-batch's training tasks
        only where each starts from a fresh inner optimizer (not with ``keep_adam_state``,
        the paper's setting). Serial tasks on a CPU with a spare core (``workers`` > 1 and
        none of them started for training) may use a helper thread, where the process has
        at most two intra-op threads (more are the caller's choice and kept).
        """
        device = self.resolve_device()
        cores = resolve_workers(self.workers, device)
        stacks = self.stack_tasks and _stacks(config, model, algorithm_of(config).loss(config))
        keep_state = config.keep_adam_state and config.inner_optimizer == "adam"
        workers = 1 if stacks else cores
        if keep_state and not config.validation_interval:
            workers = 1  # chained tasks stay serial and nothing else would use the workers
        training: RunnerKind = "serial"
        if stacks and config.meta_batch > 1:
            training = "stacked"
        elif workers > 1 and not keep_state:
            training = "pool"
        evaluation: RunnerKind = "stacked" if stacks else "pool" if workers > 1 else "serial"
        helper = (
            device.type == "cpu"
            and training == "serial"
            and cores > 1
            and torch.get_num_threads() <= 2
        )
        return Plan(device, workers, training, evaluation, helper, self.cuda_graphs, self.tf32)

    def plan_evaluation(self, config: Config, model: nn.Module, tasks: int) -> Plan:
        """The plan of an evaluation of ``tasks`` tasks of ``config`` with ``model``."""
        device = self.resolve_device()
        stacks = self.stack_tasks and _stacks(config, model, algorithm_of(config).loss(config))
        workers = 1 if stacks else min(resolve_workers(self.workers, device), tasks)
        evaluation: RunnerKind = "stacked" if stacks else "pool" if workers > 1 else "serial"
        return Plan(device, workers, "serial", evaluation, False, self.cuda_graphs, self.tf32)


def compute_from(compute: Compute | None, legacy: Mapping[str, Any], caller: str) -> Compute:
    """``compute``, or one built from the keyword arguments ``train`` and ``evaluate`` took
    before ``Compute`` (``device=``, ``workers=``, ``cuda_graphs=``, ``stack_tasks=``,
    ``tf32=``), which still work and warn (DeprecationWarning)."""
    names = {f.name for f in fields(Compute)}
    unknown = sorted(set(legacy) - names)
    if unknown:
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}")
    if compute is not None and not isinstance(compute, Compute):
        raise TypeError(f"{caller}(): compute must be a metatrain.Compute, got {compute!r}")
    if not legacy:
        return compute if compute is not None else Compute()
    if compute is not None:
        raise TypeError(f"{caller}(): give compute=Compute(...) or its fields, not both")
    warnings.warn(
        f"{caller}({', '.join(f'{k}=...' for k in legacy)}) is deprecated: "
        f"pass compute=metatrain.Compute({', '.join(f'{k}=...' for k in legacy)})",
        DeprecationWarning,
        stacklevel=3,
    )
    return Compute(**legacy)
