"""Task runners: a meta-batch's training tasks, or an evaluation's tasks, each from theta.

Training and evaluation hand a runner the same thing, an iterator of (task, mini-batch order)
drawn in the serial order, and get each task's answer back in task order, so every runner
computes the numbers of the one-task loop:

- ``SerialRunner``: one task after another on the learner in this process. Where the learner
  has a helper thread, it computes each later task's first step ahead (they all start from
  theta, whatever the optimizer's state).
- ``PoolRunner``: side by side in task worker processes (``metatrain.engine.pool``): for
  evaluation always, for training only where tasks do not share the optimizer's state.
- ``StackedRunner``: regression MLPs with SGD, many tasks adapted at once
  (``metatrain.engine.stacked``; the same up to rounding).

The answers: training, (the task's share of the meta-update, its inner steps' statistics);
evaluation, (score, loss before adaptation or None) (``metatrain.engine.tasks``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..algorithms import TaskTensors
from ..config import Config
from .by_hand import Pending
from .learner import Learner
from .pool import TaskPool
from .stacked import evaluate_regression_tasks, train_regression_tasks
from .tasks import ScoredTask, TaskContext, TrainedTask, score_task, train_task

__all__ = ["TaskRunner", "SerialRunner", "PoolRunner", "StackedRunner", "STACKED_TASKS"]

# Regression tasks evaluated together by metatrain.engine.stacked (a fixed stack size: see
# evaluate_regression_tasks's pad_to).
STACKED_TASKS = 100

TrainJobs = Iterable[tuple[TaskTensors, np.ndarray]]
EvalJobs = Iterable[tuple[Sequence[torch.Tensor], np.ndarray]]


class TaskRunner:
    """Runs tasks from theta and yields their answers in task order."""

    name = ""

    def train(self, jobs: TrainJobs, theta: Sequence[torch.Tensor]) -> Iterator[TrainedTask]:
        """Each training task's (share, inner steps), the learner's weights left at theta."""
        raise NotImplementedError

    def evaluate(
        self, jobs: EvalJobs, theta: Sequence[torch.Tensor], transductive: bool
    ) -> Iterator[ScoredTask]:
        """Each evaluation task's (score, loss before or None), every task from theta and the
        optimizer state the learner has now; both are as before when this returns."""
        raise NotImplementedError


class SerialRunner(TaskRunner):
    """One task at a time on ``learner``."""

    name = "serial"

    def __init__(self, learner: Learner, config: Config) -> None:
        self.learner = learner
        self.context = TaskContext(learner, config)

    def train(self, jobs: TrainJobs, theta: Sequence[torch.Tensor]) -> Iterator[TrainedTask]:
        learner, ctx = self.learner, self.context
        ctx.theta, ctx.snapshot = list(theta), None  # the optimizer's state chains, if kept
        drawn = list(jobs)
        # Every task starts from theta, so its first step's gradients need nothing from the
        # tasks before it, even with Adam's moments chained: the helper thread (if any)
        # computes them in its spare time. The same kernels, so the same bits.
        firsts: list[Pending | None] = [None] * len(drawn)
        if learner.computes_ahead:  # else the batches would be gathered for nothing
            for i in range(1, len(drawn)):
                task, order = drawn[i]
                batch = ctx.algorithm.first_batch(task, order)
                firsts[i] = learner.gradients_later(*batch, ctx.theta)
        try:
            for (task, order), first in zip(drawn, firsts, strict=True):
                ctx.start_task(first)
                yield train_task(ctx, task, order)
                ctx.restore_weights()
        finally:
            # After a failure: the helper drops what is left (a job still reading theta
            # when the next step overwrites it computes numbers nobody takes).
            learner.drop_first()
            for pending in firsts:
                if pending is not None:
                    pending.cancel()

    def evaluate(
        self, jobs: EvalJobs, theta: Sequence[torch.Tensor], transductive: bool
    ) -> Iterator[ScoredTask]:
        learner, ctx = self.learner, self.context
        ctx.theta, ctx.snapshot = list(theta), learner.optimizer_snapshot()
        try:
            for task, order in jobs:
                ctx.start_task()
                result = score_task(ctx, task, order, transductive)
                ctx.restore_weights()
                yield result
        finally:
            learner.load_params(ctx.theta)
            learner.optimizer_restore(ctx.snapshot)
            ctx.snapshot = None


class PoolRunner(TaskRunner):
    """Tasks side by side in ``pool``'s worker processes, replicas of ``learner``."""

    name = "pool"

    def __init__(self, pool: TaskPool, learner: Learner) -> None:
        self.pool, self.learner = pool, learner

    def train(self, jobs: TrainJobs, theta: Sequence[torch.Tensor]) -> Iterator[TrainedTask]:
        if self.learner.keep_state:
            raise ValueError(
                "tasks that share Adam's moments (keep_adam_state) cannot run side by side"
            )
        self.pool.set_weights(theta)
        return self.pool.run(train_task, jobs)

    def evaluate(
        self, jobs: EvalJobs, theta: Sequence[torch.Tensor], transductive: bool
    ) -> Iterator[ScoredTask]:
        learner = self.learner
        self.pool.set_weights(theta)
        self.pool.set_optimizer_state(
            learner.optimizer.state_dict() if learner.keep_state else None
        )
        return self.pool.run(score_task, ((task, order, transductive) for task, order in jobs))


class StackedRunner(TaskRunner):
    """A meta-batch's tasks, or ``STACKED_TASKS`` evaluation tasks, adapted at once."""

    name = "stacked"

    def __init__(self, learner: Learner, config: Config) -> None:
        if not isinstance(learner.model, nn.Sequential):
            raise ValueError("stacked tasks need an nn.Sequential MLP")
        self.learner, self.model, self.config = learner, learner.model, config
        self.context = TaskContext(learner, config)

    def _lr(self) -> float:
        return float(self.learner.optimizer.param_groups[0]["lr"])

    def train(self, jobs: TrainJobs, theta: Sequence[torch.Tensor]) -> Iterator[TrainedTask]:
        drawn = list(jobs)
        tasks, orders = [t for t, _ in drawn], [o for _, o in drawn]
        shares, steps = train_regression_tasks(
            self.model,
            theta,
            self.context.algorithm,
            tasks,
            orders,
            self._lr(),
            self.learner.loss,
        )
        for t in range(len(drawn)):  # in task order, as the one-task loop sums them
            yield [share[t] for share in shares], list(steps[t])

    def evaluate(
        self, jobs: EvalJobs, theta: Sequence[torch.Tensor], transductive: bool
    ) -> Iterator[ScoredTask]:
        pending = iter(jobs)
        while chunk := list(itertools.islice(pending, STACKED_TASKS)):
            after, before = evaluate_regression_tasks(
                self.model,
                theta,
                [t for t, _ in chunk],
                [o for _, o in chunk],
                self._lr(),
                pad_to=STACKED_TASKS,
                loss=self.learner.loss,
            )
            yield from zip(after.unbind(), before.unbind(), strict=True)


def make_runner(
    kind: str, learner: Learner, config: Config, pool: TaskPool | None = None
) -> TaskRunner:
    """The runner named ``kind`` ("serial", "pool", "stacked"; a ``Plan``'s ``training`` or
    ``evaluation``) around ``learner``."""
    if kind == "stacked":
        return StackedRunner(learner, config)
    if kind == "pool":
        if pool is None:
            raise ValueError("a pool runner needs a TaskPool")
        return PoolRunner(pool, learner)
    return SerialRunner(learner, config)
