"""Many independent tasks adapted at once, for multilayer perceptrons with plain SGD.

One task of the sine MLP is mostly Python and kernel-launch overhead around tiny matrix
products. Stacking T tasks' copies of the weights along a leading dimension turns every layer
into one batched product (``torch.baddbmm``) over all T tasks, and one backward pass of the
sum of the tasks' losses gives each copy exactly its own task's gradient (the copies share
nothing). ``torch.func``'s ``vmap(grad(...))`` does the same generically but with a higher
per-step overhead; batching conv nets this way (grouped convolutions) was slower than one task
at a time, so they keep the per-task loop and the task workers (figures in docs/engine.md).

Only plain SGD qualifies: it is stateless, so a task's steps depend on nothing but its own
data; and only a loss with a per-task form (``Loss.has_per_task``). Each task's mini-batches
are drawn exactly as in the per-task loop (``batch_order``), and the algorithm's own
``task_share`` runs on the stacked weights (``StackedTasks``). Results equal the per-task
loop's up to floating-point rounding (tested), with one caveat: from a poor initialization SGD
diverges on a few tasks, and there rounding decides how far.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..algorithms import Algorithm, TaskTensors
from ..losses import MSE, Loss
from .learner import Learner

__all__ = [
    "StackedTasks",
    "stackable",
    "stacks_tasks",
    "stacked_forward",
    "stacked_adapt",
    "train_regression_tasks",
    "evaluate_regression_tasks",
]

# Elementwise activations: they act on a stacked (T, N, features) tensor unchanged.
_ELEMENTWISE = (nn.Tanh, nn.ReLU, nn.Sigmoid, nn.Identity)


def stackable(model: nn.Module, optimizer_name: str) -> bool:
    """Whether tasks of ``model`` trained with ``optimizer_name`` can be adapted stacked:
    an ``nn.Sequential`` of ``nn.Linear`` (with bias) and elementwise activations, and SGD."""
    if optimizer_name != "sgd" or not isinstance(model, nn.Sequential) or len(model) == 0:
        return False
    linears = 0
    for module in model:
        if isinstance(module, nn.Linear):
            if module.bias is None:
                return False
            linears += 1
        elif not isinstance(module, _ELEMENTWISE):
            return False
    return linears > 0


def stacks_tasks(learner: Learner) -> bool:
    """Whether a ``Learner``'s tasks are adapted stacked rather than one at a time or in task
    workers: a loss with a per-task form, a stackable MLP and plain SGD."""
    return learner.loss.has_per_task and stackable(learner.model, learner.optimizer_name)


def _field(tasks: Sequence[Sequence[torch.Tensor]], index: int) -> torch.Tensor:
    """Field ``index`` of every task (0, 1: support x, y; 2, 3: query or tail x, y), stacked."""
    return torch.stack([t[index] for t in tasks])


def _stack(values: Sequence[torch.Tensor], tasks: int) -> list[torch.Tensor]:
    """``tasks`` copies of each tensor along a new leading dimension, as leaves for autograd."""
    return [v.detach().unsqueeze(0).repeat(tasks, *([1] * v.dim())) for v in values]


def stacked_forward(
    model: nn.Sequential, weights: Sequence[torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """``model`` with task t's weights ``weights[i][t]`` on ``x[t]``; x is (T, N, in).

    ``weights`` are the model's parameters in ``model.parameters()`` order, each stacked.
    """
    h = x
    params = iter(weights)
    for module in model:
        if isinstance(module, nn.Linear):
            w, b = next(params), next(params)
            if w.shape[-1] == 1:
                # One input feature: F.linear's addmm is then a fused multiply-add per
                # element, which addcmul reproduces exactly (baddbmm rounds differently).
                h = torch.addcmul(b.unsqueeze(1), h, w.transpose(1, 2))
            else:
                # (T, N, in) @ (T, in, out) + (T, 1, out): every task's x W^T + b at once.
                h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        else:
            h = module(h)
    return h


class StackedTasks:
    """T tasks' copies of the weights, stacked and adapted together with SGD on ``loss``'s
    per-task form: the ``metatrain.algorithms.Adapter`` an algorithm's ``task_share`` trains
    in place of one learner. Batches are stacked too: x is (T, N, features).

    ``step_losses``: each step's (T,) losses, measured before its update, are appended to
    it, and ``step_sizes`` gets each step's batch size.
    """

    def __init__(
        self,
        model: nn.Sequential,
        theta: Sequence[torch.Tensor],
        tasks: int,
        lr: float,
        loss: Loss,
        step_losses: list[torch.Tensor] | None = None,
    ) -> None:
        self.model, self.lr, self.loss, self.step_losses = model, lr, loss, step_losses
        self.weights = _stack(theta, tasks)
        for w in self.weights:
            w.requires_grad_(True)
        self.step_sizes: list[int] = []

    @property
    def params(self) -> list[torch.Tensor]:
        return self.weights

    def adapt(self, x: torch.Tensor, y: torch.Tensor, order: np.ndarray) -> None:
        """One step of every task per step of ``order``: (T, steps, batch) example indices
        from ``batch_order``, one row of steps per task."""
        index = torch.from_numpy(np.ascontiguousarray(order, dtype=np.int64)).to(x.device)
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        for step in range(index.shape[1]):
            batch = index[:, step]  # (T, batch)
            self.step(x[rows, batch], y[rows, batch])

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One SGD step of every task on its batch, in place."""
        losses = self.loss.per_task(stacked_forward(self.model, self.weights, x), y)
        if self.step_losses is not None:
            self.step_losses.append(losses.detach())
        self.step_sizes.append(x.shape[1])
        grads = torch.autograd.grad(losses.sum(), self.weights)
        with torch.no_grad():
            torch._foreach_add_(self.weights, grads, alpha=-self.lr)


def stacked_adapt(
    model: nn.Sequential,
    theta: Sequence[torch.Tensor],
    xs: torch.Tensor,
    ys: torch.Tensor,
    orders: np.ndarray,
    lr: float,
    step_losses: list[torch.Tensor] | None = None,
    loss: Loss = MSE,
) -> list[torch.Tensor]:
    """SGD on ``loss`` of T tasks at once, every task starting from ``theta``; returns the
    stacked adapted weights. ``xs``, ``ys``: (T, N, features) support sets; ``orders``:
    (T, steps, batch) example indices (see ``StackedTasks``)."""
    stack = StackedTasks(model, theta, xs.shape[0], lr, loss, step_losses)
    stack.adapt(xs, ys, orders)
    return [w.detach() for w in stack.weights]


def train_regression_tasks(
    model: nn.Sequential,
    theta: Sequence[torch.Tensor],
    algorithm: Algorithm,
    tasks: Sequence[TaskTensors],
    orders: Sequence[np.ndarray],
    lr: float,
    loss: Loss,
) -> tuple[list[torch.Tensor], list[list[tuple[torch.Tensor, None, int]]]]:
    """Every task's share of a meta-update (stacked along the first dimension) and each
    task's inner steps' (mean loss, None, examples), as ``algorithm.task_share`` computes
    them one task at a time."""
    step_losses: list[torch.Tensor] = []
    stack = StackedTasks(model, theta, len(tasks), lr, loss, step_losses)
    stacked_task = (_field(tasks, 0), _field(tasks, 1), _field(tasks, 2), _field(tasks, 3))
    scratch = [torch.zeros_like(w) for w in stack.weights]
    shares = algorithm.task_share(stack, stacked_task, np.stack(orders), scratch)
    steps = [
        [
            (losses[t], None, size)
            for losses, size in zip(step_losses, stack.step_sizes, strict=True)
        ]
        for t in range(len(tasks))
    ]
    return [s.detach() for s in shares], steps


def evaluate_regression_tasks(
    model: nn.Sequential,
    theta: Sequence[torch.Tensor],
    tasks: Sequence[Sequence[torch.Tensor]],
    orders: Sequence[np.ndarray],
    lr: float,
    pad_to: int = 0,
    loss: Loss = MSE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query mean squared errors (after, before adaptation) of regression tasks adapted
    together with ``loss``: (T,) each, as ``metatrain.engine.tasks.score_task`` computes them
    one task at a time.

    ``pad_to``: adapt copies of the last task too, up to this many, and drop them. Batched
    products of very few entries round differently, so a fixed stack size makes every task's
    numbers independent of how many tasks are evaluated or where a stop request cut the last
    stack short.
    """
    count = len(tasks)
    if count < pad_to:
        tasks = [*tasks, *[tasks[-1]] * (pad_to - count)]
        orders = [*orders, *[orders[-1]] * (pad_to - count)]
    query_x, query_y = _field(tasks, 2), _field(tasks, 3)
    with torch.no_grad():
        before = MSE.per_task(stacked_forward(model, _stack(theta, len(tasks)), query_x), query_y)
    adapted = stacked_adapt(
        model, theta, _field(tasks, 0), _field(tasks, 1), np.stack(orders), lr, loss=loss
    )
    with torch.no_grad():
        after = MSE.per_task(stacked_forward(model, adapted, query_x), query_y)
    return after[:count], before[:count]
