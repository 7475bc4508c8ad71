"""What one task is, as the engine runs it: shared by the serial runner in this process and by
the task workers of ``metatrain.engine.pool``, so both compute the same numbers.

A job function takes a ``TaskContext`` (a learner, what each task starts from, the
algorithm) and one task with its mini-batch order, and returns plain tensors:

- ``train_task``: the algorithm's share of the meta-update and each inner step's statistics;
- ``score_task``: adapt to an evaluation task and score its queries (classification: the
  fraction right; regression: the mean squared error after adaptation, and the one before).

Their specification is ``metatrain.reference``; non-transductive prediction here forwards
several queries per pass, each with the whole support set and normalised with its own
statistics, which gives the outputs of the paper's one-query loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..algorithms import Algorithm, TaskTensors, algorithm_of
from ..config import Config
from .by_hand import Pending
from .learner import Learner, Snapshot, StepRecorder

__all__ = [
    "TaskContext",
    "TrainedTask",
    "ScoredTask",
    "train_task",
    "score_task",
    "grouped_forward",
    "predict_each",
]

# Non-transductive evaluation: images per grouped forward pass (see predict_each).
_MAX_IMAGES_PER_PASS_CPU = 128
_MAX_IMAGES_PER_PASS_GPU = 8192

# (the task's share of the update, each inner step's (mean loss, correct, examples))
TrainedTask = tuple[Sequence[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor | None, int]]]
# (score, loss before adaptation or None)
ScoredTask = tuple[torch.Tensor, torch.Tensor | None]


class TaskContext:
    """A learner and what every task starts from: the weights ``theta`` and, with
    ``keep_state``, the optimizer state ``snapshot`` (None: the state as each task finds it,
    chained from task to task in training)."""

    def __init__(
        self,
        learner: Learner,
        config: Config,
        theta: Sequence[torch.Tensor] | None = None,
        snapshot: Snapshot | None = None,
    ) -> None:
        self.learner = learner
        self.config = config
        self.algorithm: Algorithm = algorithm_of(config)
        self.theta: list[torch.Tensor] = learner.copy_params() if theta is None else list(theta)
        self.scratch = [torch.zeros_like(t) for t in self.theta]
        self.snapshot = snapshot

    def start_task(self, first: Pending | None = None) -> None:
        """The optimizer at the task's starting state (the weights: ``restore_weights``).
        ``first``: the first step's gradients, already being computed
        (``Learner.gradients_later``)."""
        learner = self.learner
        learner.begin_task(first)
        if learner.keep_state and self.snapshot is not None:
            learner.optimizer_restore(self.snapshot)

    def restore_weights(self) -> None:
        """The learner at theta again."""
        self.learner.load_params(self.theta)


def train_task(ctx: TaskContext, task: TaskTensors, order: np.ndarray) -> TrainedTask:
    """Train on one task from theta (the learner at theta, ``ctx.start_task`` called): the
    algorithm's share of the update (possibly the learner's own tensors: read them before the
    next task) and each inner step's statistics."""
    recorder = StepRecorder()
    learner = ctx.learner
    learner.stats = recorder
    try:
        share = ctx.algorithm.task_share(learner, task, order, ctx.scratch)
    finally:
        learner.stats = None
    return share, recorder.steps


def score_task(
    ctx: TaskContext, task: Sequence[torch.Tensor], order: np.ndarray, transductive: bool
) -> ScoredTask:
    """Adapt to one evaluation task on the mini-batches ``order`` (the learner at theta,
    ``ctx.start_task`` called); (score, loss before adaptation or None).

    Classification: the fraction of queries classified correctly, reading the first
    ``config.ways`` outputs. Regression: the mean squared error on the query grid after
    adaptation, and the one before.
    """
    learner = ctx.learner
    model = learner.model
    support_x, support_y, query_x, query_y = task[:4]
    before = None
    if not learner.classification:
        with torch.no_grad():
            before = F.mse_loss(model(query_x), query_y)
    learner.adapt(support_x, support_y, order)
    with torch.no_grad():
        if not learner.classification:
            return F.mse_loss(model(query_x), query_y), before
        logits = model(query_x) if transductive else predict_each(model, support_x, query_x)
        pred = logits[:, : ctx.config.ways].argmax(1)
        return (pred == query_y).float().mean(), None


_PER_EXAMPLE = (nn.Conv2d, nn.Linear, nn.ReLU, nn.Tanh, nn.MaxPool2d, nn.Flatten)


def grouped_forward(model: nn.Sequential, x: torch.Tensor, groups: int) -> torch.Tensor:
    """``model`` on ``groups`` independent batches interleaved along dim 0, in one pass.

    Row ``j * groups + g`` is example j of batch g. Every layer but batch norm acts on each
    example alone, so it runs on the whole stack. For batch norm the stack is viewed as
    (examples, groups * channels, H, W): each (group, channel) pair becomes its own channel,
    so the native kernel normalises every batch with its own statistics, exactly as if it
    had been forwarded alone.
    """
    for module in model:
        if isinstance(module, nn.BatchNorm2d):
            n, c, h, w = x.shape
            y = x.reshape(n // groups, groups * c, h, w)
            y = F.batch_norm(
                y,
                None,
                None,
                module.weight.repeat(groups),
                module.bias.repeat(groups),
                True,
                0.0,
                module.eps,
            )
            x = y.reshape(n, c, h, w)
        else:
            x = module(x)
    return x


def predict_each(model: nn.Module, support_x: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
    """Outputs for each query forwarded alone with the whole support set in one batch.

    The paper's code runs one forward pass per query. For the paper's networks several
    queries share one pass (``grouped_forward``), which gives the same outputs; the number
    per pass is capped (small on CPU, where big stacks fall out of cache and gain nothing,
    large on GPU, where it saves kernel launches). Other networks use the loop.
    """
    if not isinstance(model, nn.Sequential) or not all(
        isinstance(m, (*_PER_EXAMPLE, nn.BatchNorm2d)) for m in model
    ):
        return torch.stack([model(torch.cat([support_x, q[None]]))[-1] for q in query_x])
    s = support_x.shape[0]
    cap = _MAX_IMAGES_PER_PASS_GPU if support_x.is_cuda else _MAX_IMAGES_PER_PASS_CPU
    chunk = max(1, cap // (s + 1))
    outs = []
    for start in range(0, query_x.shape[0], chunk):
        q = query_x[start : start + chunk]
        g = q.shape[0]
        # (s + 1, g, C, H, W): example j of every group, then the queries as example s.
        stack = torch.cat(
            [support_x.unsqueeze(1).expand(s, g, *support_x.shape[1:]), q.unsqueeze(0)]
        )
        out = grouped_forward(model, stack.reshape((s + 1) * g, *support_x.shape[1:]), g)
        outs.append(out.view(s + 1, g, -1)[-1])
    return torch.cat(outs)
