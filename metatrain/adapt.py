"""Adapt an initialization to one task a person gives it ("try it"), with the run's evaluation
settings, and say what the adapted network predicts.

The inner loop is the evaluation's: a ``Learner`` built from the config (its inner optimizer,
``inner_lr``, Adam with beta1 = 0), ``eval_inner_iters`` steps on mini-batches of
``eval_inner_batch`` support examples drawn by ``batch_order``, queries read as
``metatrain.engine.tasks.score_task`` reads them (transductive: all queries in one batch; else
each alone with the support set). The optimizer always starts fresh: a downloaded
initialization has no training Adam state.

- ``network``: the run's trained network from its weights, or (no weights) the network the
  run started from, the same architecture drawn from ``seeding.init_generator(seed)``;
- ``classify``: class probabilities of each query after adaptation;
- ``fit_sine``: predictions on a grid after 0, 1 and 32 steps (the paper's Figure 1).

A ``deadline`` (``time.monotonic()`` value) is checked before every step: past it,
``AdaptTimeout`` is raised, so a caller can hold the work to a strict time limit.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .config import Config
from .data import batch_order
from .engine.learner import Learner
from .engine.tasks import predict_each
from .models import build_model
from .seeding import init_generator

__all__ = ["AdaptTimeout", "network", "classify", "fit_sine", "SINE_STEPS"]

# The paper's Figure 1: the fit before adaptation and after 1 and 32 steps.
SINE_STEPS = (0, 1, 32)


class AdaptTimeout(RuntimeError):
    """Adaptation did not finish before its deadline."""


def network(
    config: Config, weights: Mapping[str, torch.Tensor] | None = None, *, seed: int = 0
) -> nn.Module:
    """The network ``config`` names: with ``weights`` (a state dict, e.g. read from
    ``initialization.safetensors``) loaded strictly; without, randomly initialised from
    ``seed`` as training initialises it (``seed=config.seed`` gives the run's own start)."""
    model = build_model(config, generator=init_generator(seed))
    if weights is not None:
        model.load_state_dict(dict(weights), strict=True)
    return model


def _learner(model: nn.Module, config: Config) -> Learner:
    # No CUDA graphs or helper thread: one short task on the CPU, built per request.
    return Learner.from_config(model, config, cuda_graphs=False, helper_thread=False)


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise AdaptTimeout("adaptation took longer than its time limit")


def classify(
    model: nn.Module,
    config: Config,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    *,
    seed: int = 0,
    deadline: float | None = None,
) -> torch.Tensor:
    """Adapt ``model`` (changed in place) to the support set and return the probabilities
    (queries, ways) of each query, ways = ``support_y.max() + 1`` (labels 0..ways-1; the
    network's extra outputs are ignored, as evaluation ignores them). Mini-batches are drawn
    from ``numpy.random.default_rng(seed)``."""
    ways = int(support_y.max()) + 1
    outputs = _outputs(model)
    if outputs is not None and ways > outputs:
        raise ValueError(f"the network has {outputs} outputs; the task has {ways} classes")
    learner = _learner(model, config)
    try:
        rng = np.random.default_rng(seed)
        order = batch_order(len(support_x), config.eval_inner_batch, config.eval_inner_iters, rng)
        for i in range(len(order)):
            _check(deadline)
            learner.adapt(support_x, support_y, order[i : i + 1])
    finally:
        learner.close()
    with torch.no_grad():
        transductive = config.transductive
        logits = model(query_x) if transductive else predict_each(model, support_x, query_x)
        return torch.softmax(logits[:, :ways], dim=1)


def fit_sine(
    model: nn.Module,
    config: Config,
    x: torch.Tensor,
    y: torch.Tensor,
    grid: torch.Tensor,
    *,
    steps: Sequence[int] = SINE_STEPS,
    seed: int = 0,
    deadline: float | None = None,
) -> dict[int, torch.Tensor]:
    """Adapt ``model`` (changed in place) to the points (x, y), both (n, 1), on mini-batches
    of ``eval_inner_batch`` and return its predictions on ``grid`` (m, 1) after each number of
    ``steps`` (0: the initialization itself)."""
    wanted = sorted(set(steps))
    if not wanted or wanted[0] < 0:
        raise ValueError(f"steps must be numbers >= 0; got {list(steps)}")
    predictions: dict[int, torch.Tensor] = {}
    learner = _learner(model, config)
    try:
        rng = np.random.default_rng(seed)
        order = batch_order(len(x), config.eval_inner_batch, wanted[-1], rng)
        for i in range(len(order) + 1):
            if i in wanted:
                with torch.no_grad():
                    predictions[i] = model(grid).detach().clone()
            if i < len(order):
                _check(deadline)
                learner.adapt(x, y, order[i : i + 1])
    finally:
        learner.close()
    return predictions


def _outputs(model: nn.Module) -> int | None:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else None
