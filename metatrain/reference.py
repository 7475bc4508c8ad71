"""Reptile and first-order MAML in the paper's plain form: the specification.

Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms" (2018), as its code
(openai/supervised-reptile) computes them: one network and one inner optimizer; each task of
a meta-batch starts from the meta-weights theta, takes its inner steps, and gives its share
of the update; the optimizer's moments carry over from task to task when
``keep_adam_state`` is set, else each task starts a fresh optimizer. Evaluation adapts to a
task, scores its queries, and puts back the weights and the optimizer's state.

Nothing here is fast, and nothing here is used for training: ``metatrain.algorithms`` and
``metatrain.engine`` compute the same numbers faster, and the tests hold every fast path to
these functions (bit for bit on the CPU where the path runs the same kernels).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import Config
from .data import mini_batches

__all__ = [
    "inner_optimizer",
    "inner_step",
    "reptile_meta_step",
    "fomaml_meta_step",
    "evaluate_task",
]

# (support_x, support_y, tail_x, tail_y): the tail is FOMAML's held-out last batch.
Task = Sequence[torch.Tensor]


def inner_optimizer(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    """Adam with beta1 = 0 and TensorFlow's epsilon (the paper's), or plain SGD."""
    if config.inner_optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.inner_lr)
    betas = (0.0, config.adam_beta2)
    return torch.optim.Adam(model.parameters(), lr=config.inner_lr, betas=betas, eps=1e-8)


def inner_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    config: Config,
) -> torch.Tensor:
    """One step on the batch (x, y); its loss per example, measured before the step.

    Classification minimises the cross-entropy summed over the batch (the paper's TF code
    differentiates the vector of per-example losses); regression the mean squared error."""
    out = model(x)
    if config.is_classification:
        loss = F.cross_entropy(out, y, reduction="sum")
    else:
        loss = F.mse_loss(out, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach() / len(y) if config.is_classification else loss.detach()


def _start_task(
    model: nn.Module, optimizer: torch.optim.Optimizer, theta: list[torch.Tensor], config: Config
) -> None:
    with torch.no_grad():
        for p, start in zip(model.parameters(), theta, strict=True):
            p.copy_(start)
    if not (config.keep_adam_state and config.inner_optimizer == "adam"):
        optimizer.state.clear()  # a fresh optimizer


def reptile_meta_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sample_task: Callable[[], Task],
    config: Config,
    step_size: float,
    rng: np.random.Generator,
) -> float:
    """theta <- theta + step_size * (mean_i phi_i - theta), phi_i the weights after
    ``inner_iters`` mini-batches of task i. Returns the mean inner loss per example."""
    theta = [p.detach().clone() for p in model.parameters()]
    adapted, losses = [], []
    for _ in range(config.meta_batch):
        support_x, support_y, *_ = sample_task()
        _start_task(model, optimizer, theta, config)
        batches = mini_batches(support_x, support_y, config.inner_batch, config.inner_iters, rng)
        for x, y in batches:
            losses.append(float(inner_step(model, optimizer, x, y, config)))
        adapted.append([p.detach().clone() for p in model.parameters()])
    with torch.no_grad():
        for p, start, *phis in zip(model.parameters(), theta, *adapted, strict=True):
            mean = sum(phis) / len(phis)
            p.copy_(start.add(mean - start, alpha=step_size))
    return sum(losses) / len(losses)


def fomaml_meta_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sample_task: Callable[[], Task],
    config: Config,
    step_size: float,
    rng: np.random.Generator,
) -> float:
    """theta <- theta + step_size * mean_i u_i, u_i the weight change of task i's last inner
    step: with ``fomaml_tail_shots`` 0 the last of ``inner_iters`` mini-batches of its
    examples (the paper code's ``--foml``); else its tail batch, after ``inner_iters - 1``
    mini-batches of its other examples (``--foml-tail``). Returns the mean inner loss per
    example."""
    theta = [p.detach().clone() for p in model.parameters()]
    updates, losses = [], []
    shared = config.fomaml_tail_shots == 0
    for _ in range(config.meta_batch):
        support_x, support_y, tail_x, tail_y, *_ = sample_task()
        _start_task(model, optimizer, theta, config)
        steps = config.inner_iters if shared else config.inner_iters - 1
        batches = list(mini_batches(support_x, support_y, config.inner_batch, steps, rng))
        if shared:
            *batches, (tail_x, tail_y) = batches
        for x, y in batches:
            losses.append(float(inner_step(model, optimizer, x, y, config)))
        before = [p.detach().clone() for p in model.parameters()]
        losses.append(float(inner_step(model, optimizer, tail_x, tail_y, config)))
        updates.append([p.detach() - b for p, b in zip(model.parameters(), before, strict=True)])
    with torch.no_grad():
        for p, start, *us in zip(model.parameters(), theta, *updates, strict=True):
            p.copy_(start.add(sum(us), alpha=step_size / len(us)))
    return sum(losses) / len(losses)


def evaluate_task(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    task: Task,
    config: Config,
    rng: np.random.Generator,
) -> float:
    """Adapt to one evaluation task, from the current weights and optimizer state, with
    ``eval_inner_iters`` mini-batches of ``eval_inner_batch``; then put both back. The
    fraction of queries classified right (all in one batch if ``config.transductive``, else
    each alone with the support set), or for regression the query loss."""
    support_x, support_y, query_x, query_y, *_ = task
    weights = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(optimizer.state_dict())
    if not (config.keep_adam_state and config.inner_optimizer == "adam"):
        optimizer.state.clear()
    batches = mini_batches(
        support_x, support_y, config.eval_inner_batch, config.eval_inner_iters, rng
    )
    for x, y in batches:
        inner_step(model, optimizer, x, y, config)
    with torch.no_grad():
        if not config.is_classification:
            score = F.mse_loss(model(query_x), query_y).item()
        else:
            if config.transductive:
                logits = model(query_x)
            else:
                logits = torch.stack([model(torch.cat([support_x, q[None]]))[-1] for q in query_x])
            score = (logits[:, : config.ways].argmax(1) == query_y).float().mean().item()
        for p, w in zip(model.parameters(), weights, strict=True):
            p.copy_(w)
    optimizer.load_state_dict(state)
    return score
