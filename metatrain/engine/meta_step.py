"""One outer step of an algorithm, as the engine computes it: the fast form of
``metatrain.reference``'s meta-steps (tested equal to them).

The algorithm (``metatrain.algorithms``) says what a task contributes and how the meta-weights
move; a runner (``metatrain.engine.runners``) says where the tasks are trained. Here: the
meta-weights and the sum of the shares live in buffers allocated once, tasks and their
mini-batches are drawn in the one-task loop's order, the shares are summed in task order,
and losses and accuracies are accumulated as tensors, so the device is synchronised once per
meta-iteration, not per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from ..algorithms import TaskTensors, algorithm_of
from ..config import Config
from ..data import batch_order
from .learner import InnerStats, Learner
from .runners import TaskRunner

__all__ = ["MetaStep"]


class MetaStep:
    """``step(sample_task, step_size, rng)``: one outer step of ``config.algorithm`` over
    ``config.meta_batch`` tasks drawn from ``sample_task``, run by ``runner``; the meta-batch's
    inner-loop metrics (``inner_loss``, and ``inner_accuracy`` for classification)."""

    def __init__(self, learner: Learner, config: Config, runner: TaskRunner) -> None:
        self.learner = learner
        self.config = config
        self.runner = runner
        self.algorithm = algorithm_of(config)
        self._theta = learner.copy_params()
        self._total = [torch.zeros_like(t) for t in self._theta]

    def __call__(
        self,
        sample_task: Callable[[], TaskTensors],
        step_size: float,
        rng: np.random.Generator,
        tick: Callable[[], None] | None = None,
    ) -> dict[str, float]:
        learner, config, algorithm = self.learner, self.config, self.algorithm
        with torch.no_grad():
            torch._foreach_copy_(self._theta, [p.detach() for p in learner.params])
            torch._foreach_zero_(self._total)
        steps = algorithm.inner_steps(config)

        def jobs() -> Iterator[tuple[TaskTensors, np.ndarray]]:
            # Drawn as the runner asks for them, each task then its mini-batches.
            for _ in range(config.meta_batch):
                task = sample_task()
                yield task, batch_order(len(task[0]), config.inner_batch, steps, rng)

        stats = InnerStats()
        for share, inner_steps in self.runner.train(jobs(), self._theta):
            for mean_loss, correct, examples in inner_steps:
                stats.add(mean_loss, correct, examples)
            with torch.no_grad():
                torch._foreach_add_(self._total, list(share))
            if tick is not None:
                tick()
        algorithm.outer_update(
            learner.params, self._theta, self._total, config.meta_batch, step_size
        )
        return stats.summary(learner.classification)
