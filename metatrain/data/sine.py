"""Sine-wave regression tasks (the paper's section 4 toy problem).

A task is y = a * sin(x + b) with amplitude a ~ U[0.1, 5] and phase b ~ U[0, 2*pi]. The
learner sees ``points`` examples with x ~ U[-5, 5], or with ``grid`` the ``points`` evenly
spaced x over [-5, 5] in a random order (the Reptile sine demo's training tasks: 50 such
points, shuffled, in mini-batches); it is judged (and plotted) on a fixed, evenly spaced grid
over [-5, 5], so "before" and "after" curves of different tasks line up.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, 2.0 * math.pi)
X_RANGE = (-5.0, 5.0)
QUERY_POINTS = 50


class SineTask(NamedTuple):
    """One sine task; x and y tensors are float32 of shape (n, 1)."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    amplitude: float
    phase: float

    def to(self, device: torch.device | str) -> SineTask:
        """The same task with its tensors on ``device``."""
        return self._replace(
            support_x=self.support_x.to(device),
            support_y=self.support_y.to(device),
            query_x=self.query_x.to(device),
            query_y=self.query_y.to(device),
        )


class SineTaskSampler:
    """Samples sine tasks from ``rng`` (deterministic given its state).

    ``points``: support examples per task (the paper's K). ``query_points``: size of the fixed
    evaluation grid over [-5, 5]. ``grid``: the support x are ``points`` evenly spaced values
    over [-5, 5], shuffled, instead of uniform draws.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        points: int,
        query_points: int = QUERY_POINTS,
        *,
        grid: bool = False,
    ) -> None:
        if points < 1 or query_points < 1:
            raise ValueError(
                f"need points >= 1 and query_points >= 1, got {points}, {query_points}"
            )
        self.rng = rng
        self.points = points
        self.grid = grid
        self._support_grid = np.linspace(X_RANGE[0], X_RANGE[1], points, dtype=np.float64)[:, None]
        query = np.linspace(X_RANGE[0], X_RANGE[1], query_points, dtype=np.float64)
        self._grid = query[:, None]
        self._query_x = torch.from_numpy(self._grid.astype(np.float32))

    def sample(self) -> SineTask:
        amplitude = float(self.rng.uniform(*AMPLITUDE_RANGE))
        phase = float(self.rng.uniform(*PHASE_RANGE))
        if self.grid:
            x = self.rng.permutation(self._support_grid)
        else:
            x = self.rng.uniform(X_RANGE[0], X_RANGE[1], size=(self.points, 1))
        return SineTask(
            support_x=torch.from_numpy(x.astype(np.float32)),
            support_y=torch.from_numpy((amplitude * np.sin(x + phase)).astype(np.float32)),
            query_x=self._query_x.clone(),
            query_y=torch.from_numpy((amplitude * np.sin(self._grid + phase)).astype(np.float32)),
            amplitude=amplitude,
            phase=phase,
        )
