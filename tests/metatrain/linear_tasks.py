"""A one-weight linear model and tiny regression tasks whose updates can be checked by hand, for
the algorithm and learner tests (import tests.metatrain.linear_tasks)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from metatrain import Config
from metatrain.engine.learner import Learner
from metatrain.engine.meta_step import MetaStep
from metatrain.engine.runners import SerialRunner
from metatrain.losses import MSE

LR = 0.05


def linear(w: float, b: float) -> nn.Linear:
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(w)
        model.bias.fill_(b)
    return model


def params(model: nn.Linear) -> tuple[float, float]:
    return model.weight.item(), model.bias.item()


def config(**changes) -> Config:
    base = {
        "dataset": "sine",
        "model": "sine_mlp",
        "inner_optimizer": "sgd",
        "inner_lr": LR,
        "inner_batch": 4,  # = the task size: every mini-batch is the whole (shuffled) task
        "inner_iters": 3,
        "train_shots": 4,
        "fomaml_tail_shots": 3,
        "meta_batch": 1,
    }
    return Config.from_dict({**base, **changes})


def task(seed: int) -> tuple[torch.Tensor, ...]:
    """(x, y, tail x, tail y): 4 points of a noisy line, and a tail of 3 from another line."""
    g = np.random.default_rng(seed)
    x = g.uniform(-2, 2, size=(4, 1))
    y = 1.5 * x - 0.3 + g.normal(0, 0.1, size=(4, 1))
    tx = g.uniform(-2, 2, size=(3, 1))
    ty = -0.5 * tx + 0.7
    return tuple(torch.tensor(a, dtype=torch.float32) for a in (x, y, tx, ty))


def sampler(tasks):
    it = iter(tasks)
    return lambda: next(it)


def regression_learner(w: float, b: float, optimizer: str = "sgd", **kw) -> Learner:
    return Learner(linear(w, b), loss=MSE, optimizer=optimizer, lr=LR, **kw)


def meta_step(learner: Learner, config: Config) -> MetaStep:
    """The meta-step of ``config.algorithm`` with tasks one at a time on ``learner``."""
    return MetaStep(learner, config, SerialRunner(learner, config))
