"""Reptile and first-order MAML: one outer (meta) step each, as in openai/supervised-reptile.

Speed: one model and one inner optimizer live for the whole run. A task never copies the
network: the meta-weights are kept in a flat list of tensors, the inner loop trains the model's
own parameters, and the meta-weights are copied back in place (``torch._foreach_copy_``). The
outer update is a handful of ``torch._foreach_*`` calls. Losses and accuracies are accumulated
as tensors, so the device is synchronised once per meta-iteration, not per step.

Update rules (eps = the annealed outer step size, n = meta_batch, theta = meta-weights):

- Reptile: phi_i = the weights after ``inner_iters`` mini-batches of ``inner_batch`` on task
  i's ``train_shots`` examples per class; theta <- theta + eps * (mean_i phi_i - theta).
  This is the paper code's ``interpolate_vars(old, average_vars(new), eps)``.
- FOMAML (the paper code's ``FOML`` with ``tail_shots``): on task i run ``inner_iters - 1``
  mini-batches on the ``train_shots`` examples, then one last step on the tail batch (all
  ``fomaml_tail_shots`` further examples per class, never seen by the inner loop) and take
  that last step's weight change u_i = phi_i - phi_i' as the meta-gradient direction:
  theta <- theta + eps * mean_i u_i. With SGD, u_i = -inner_lr * grad L_tail(phi_i'), i.e.
  the first-order MAML gradient at the adapted weights, scaled by inner_lr; with Adam it is
  Adam's (normalised) step, exactly as in the paper's code. One difference to that code: its
  tail is carved out of ``train_shots`` (leaving train_shots - tail for the inner loop); here
  the tail is drawn in addition, so ``train_shots`` means the same for both algorithms.

Inner-loop loss: classification uses the *summed* cross-entropy of a mini-batch (the paper's
TF code minimises the unreduced loss vector, whose gradient is the sum); for Adam this is the
same as the mean up to epsilon. Sine regression uses the mean squared error (the sine demo).
Reported ``inner_loss`` is the per-example mean loss averaged over every inner step of the
meta-batch (measured before each step's update); ``inner_accuracy`` likewise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import Config
from .data import mini_batches

__all__ = [
    "ADAM_EPS",
    "Learner",
    "Reptile",
    "FOMAML",
    "make_algorithm",
    "meta_step_size",
]

ADAM_EPS = 1e-8  # TensorFlow's AdamOptimizer default, used by the paper

# A training task as the algorithms need it: (support_x, support_y, tail_x, tail_y).
TaskTensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def meta_step_size(config: Config, iteration: int) -> float:
    """Outer step size of meta-iteration ``iteration`` (1-based), annealed linearly.

    The paper's code: ``frac = i / meta_iters`` with its 0-based i, then
    ``frac * meta_step_final + (1 - frac) * meta_step``.
    """
    frac = (iteration - 1) / config.meta_iters
    return frac * config.meta_step_final + (1 - frac) * config.meta_step


class _Stats:
    """Running sums of inner-loop loss / accuracy, kept as tensors (no per-step sync)."""

    def __init__(self) -> None:
        self.loss: torch.Tensor | float = 0.0
        self.correct: torch.Tensor | float = 0.0
        self.examples = 0
        self.steps = 0

    def add(self, mean_loss: torch.Tensor, correct: torch.Tensor | None, n: int) -> None:
        self.loss = self.loss + mean_loss
        if correct is not None:
            self.correct = self.correct + correct
        self.examples += n
        self.steps += 1

    def summary(self, classification: bool) -> dict[str, float]:
        if self.steps == 0:
            return {}
        out = {"inner_loss": float(self.loss) / self.steps}
        if classification:
            out["inner_accuracy"] = float(self.correct) / self.examples
        return out


class Learner:
    """One network and one inner optimizer, reused for every task of a run.

    ``keep_state`` (config.keep_adam_state with Adam): the optimizer's moments carry over from
    task to task during training; otherwise each task starts from a fresh optimizer.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        classification: bool,
        optimizer: str = "adam",
        lr: float = 1e-3,
        beta2: float = 0.999,
        keep_state: bool = True,
    ) -> None:
        self.model = model
        self.params: list[nn.Parameter] = [p for p in model.parameters() if p.requires_grad]
        self.classification = classification
        self.optimizer_name = optimizer
        if optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
                self.params, lr=lr, betas=(0.0, beta2), eps=ADAM_EPS, foreach=True
            )
        elif optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.params, lr=lr, foreach=True)
        else:
            raise ValueError(f"unknown inner optimizer {optimizer!r}")
        self.keep_state = keep_state and optimizer == "adam"

    @classmethod
    def from_config(cls, model: nn.Module, config: Config) -> Learner:
        return cls(
            model,
            classification=config.is_classification,
            optimizer=config.inner_optimizer,
            lr=config.inner_lr,
            beta2=config.adam_beta2,
            keep_state=config.keep_adam_state,
        )

    # --- inner loop --------------------------------------------------------------------

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss the inner optimizer minimises (see the module docstring)."""
        if self.classification:
            return F.cross_entropy(out, y, reduction="sum")
        return F.mse_loss(out, y)

    def step(self, x: torch.Tensor, y: torch.Tensor, stats: _Stats | None = None) -> None:
        """One optimizer step on the batch (x, y)."""
        out = self.model(x)
        loss = self.loss(out, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if stats is not None:
            with torch.no_grad():
                n = len(y)
                if self.classification:
                    stats.add(loss.detach() / n, (out.argmax(1) == y).sum(), n)
                else:
                    stats.add(loss.detach(), None, n)

    def adapt(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        num_batches: int,
        rng: np.random.Generator,
        stats: _Stats | None = None,
    ) -> None:
        """``num_batches`` steps on the paper's mini-batches (without replacement) of (x, y)."""
        for xb, yb in mini_batches(x, y, batch_size, num_batches, rng):
            self.step(xb, yb, stats)

    def begin_task(self) -> None:
        """Forget the optimizer's moments unless they are meant to persist across tasks."""
        if not self.keep_state:
            self.optimizer.state.clear()

    # --- weights -----------------------------------------------------------------------

    def copy_params(self) -> list[torch.Tensor]:
        """A detached copy of the current weights."""
        with torch.no_grad():
            return [p.detach().clone() for p in self.params]

    def load_params(self, values: Sequence[torch.Tensor]) -> None:
        """Overwrite the weights in place (the optimizer keeps pointing at the same tensors)."""
        with torch.no_grad():
            torch._foreach_copy_(self.params, list(values))

    # --- optimizer state ---------------------------------------------------------------

    def optimizer_snapshot(self) -> dict[Any, dict[str, Any]]:
        """A copy of the optimizer's per-parameter state (Adam: step, moments)."""
        return {
            p: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
            for p, s in self.optimizer.state.items()
        }

    def optimizer_restore(self, snapshot: dict[Any, dict[str, Any]]) -> None:
        """Put back a snapshot; copies in place when the state has the same layout."""
        state = self.optimizer.state
        if state.keys() == snapshot.keys() and all(
            state[p].keys() == s.keys() for p, s in snapshot.items()
        ):
            dst: list[torch.Tensor] = []
            src: list[torch.Tensor] = []
            for p, s in snapshot.items():
                for k, v in s.items():
                    if torch.is_tensor(v):
                        dst.append(state[p][k])
                        src.append(v)
                    else:
                        state[p][k] = v
            if dst:
                with torch.no_grad():
                    torch._foreach_copy_(dst, src)
            return
        state.clear()
        for p, s in snapshot.items():
            state[p] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}


class _MetaAlgorithm:
    """Shared plumbing: buffers for the meta-weights and the update, allocated once."""

    def __init__(self, learner: Learner, config: Config) -> None:
        self.learner = learner
        self.config = config
        self._theta = learner.copy_params()
        self._acc = [torch.zeros_like(t) for t in self._theta]

    def step(
        self,
        sample_task: Callable[[], TaskTensors],
        step_size: float,
        rng: np.random.Generator,
        tick: Callable[[], None] | None = None,
    ) -> dict[str, float]:
        """One outer step over ``meta_batch`` tasks drawn from ``sample_task``."""
        learner = self.learner
        params = learner.params
        with torch.no_grad():
            torch._foreach_copy_(self._theta, [p.detach() for p in params])
            torch._foreach_zero_(self._acc)
        stats = _Stats()
        n = self.config.meta_batch
        for _ in range(n):
            task = sample_task()
            learner.begin_task()
            self._task(task, rng, stats)
            learner.load_params(self._theta)
            if tick is not None:
                tick()
        with torch.no_grad():
            self._apply(params, step_size, n)
        return stats.summary(learner.classification)

    def _task(self, task: TaskTensors, rng: np.random.Generator, stats: _Stats) -> None:
        raise NotImplementedError

    def _apply(self, params: list[nn.Parameter], step_size: float, n: int) -> None:
        raise NotImplementedError


class Reptile(_MetaAlgorithm):
    """theta <- theta + eps * (mean_i phi_i - theta)."""

    def _task(self, task: TaskTensors, rng: np.random.Generator, stats: _Stats) -> None:
        cfg = self.config
        x, y = task[0], task[1]
        self.learner.adapt(x, y, cfg.inner_batch, cfg.inner_iters, rng, stats)
        with torch.no_grad():
            torch._foreach_add_(self._acc, [p.detach() for p in self.learner.params])

    def _apply(self, params: list[nn.Parameter], step_size: float, n: int) -> None:
        # params hold theta again; acc = sum_i phi_i  ->  mean_i phi_i - theta
        torch._foreach_div_(self._acc, float(n))
        torch._foreach_sub_(self._acc, self._theta)
        torch._foreach_add_(params, self._acc, alpha=step_size)


class FOMAML(_MetaAlgorithm):
    """theta <- theta + eps * mean_i (last inner step's update, taken on the tail batch)."""

    def __init__(self, learner: Learner, config: Config) -> None:
        super().__init__(learner, config)
        self._before = [torch.zeros_like(t) for t in self._theta]

    def _task(self, task: TaskTensors, rng: np.random.Generator, stats: _Stats) -> None:
        cfg = self.config
        x, y, tail_x, tail_y = task
        learner = self.learner
        learner.adapt(x, y, cfg.inner_batch, cfg.inner_iters - 1, rng, stats)
        with torch.no_grad():
            torch._foreach_copy_(self._before, [p.detach() for p in learner.params])
        learner.step(tail_x, tail_y, stats)
        with torch.no_grad():
            torch._foreach_add_(self._acc, [p.detach() for p in learner.params])
            torch._foreach_sub_(self._acc, self._before)

    def _apply(self, params: list[nn.Parameter], step_size: float, n: int) -> None:
        torch._foreach_add_(params, self._acc, alpha=step_size / n)


def make_algorithm(learner: Learner, config: Config) -> Reptile | FOMAML:
    """The algorithm named by ``config.algorithm`` around ``learner``."""
    if config.algorithm == "fomaml":
        return FOMAML(learner, config)
    return Reptile(learner, config)
