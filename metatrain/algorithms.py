"""Reptile and first-order MAML as objects: what each computes, not how fast.

An ``Algorithm`` owns the loss its inner loop minimises, how many mini-batches a task's inner
loop draws, the extra examples a task carries (FOMAML's tail), each task's share of the
meta-update and the outer update itself. The engine (``metatrain.engine``) runs it, one task
at a time, in task worker processes, or many regression tasks stacked, and the same code of
``task_share`` runs on each; ``metatrain.reference`` states the same algorithms in the
paper's plain form, and the tests hold every path to it.

Everything else asks the object: ``Config`` validation (which algorithms exist, the fields
each reads and their minimums, how many examples a task draws), the dashboard (names, labels,
which form fields apply) and the command line. A first-order variant is one more subclass
registered in ``ALGORITHMS``.

Update rules (eps = the annealed outer step size, n = meta_batch, theta = meta-weights):

- Reptile: phi_i = the weights after ``inner_iters`` mini-batches of ``inner_batch`` on task
  i's ``train_shots`` examples per class; theta <- theta + eps * (mean_i phi_i - theta), the
  paper code's ``interpolate_vars(old, average_vars(new), eps)``.
- FOMAML (the paper code's ``FOML``, its section 6): the weight change u_i = phi_i - phi_i' of
  the inner loop's last step is the meta-gradient direction: theta <- theta + eps * mean_i u_i.
  With SGD, u_i = -inner_lr * grad L_last(phi_i'), the first-order MAML gradient at the
  adapted weights scaled by inner_lr; with Adam it is Adam's step, as in the paper's code.
  Which batch that last step takes is ``fomaml_tail_shots``:

  - 0, the shared tail (the paper code's ``--foml`` without ``--foml-tail``): ``inner_iters``
    mini-batches of the ``train_shots`` examples, as Reptile's; u_i is the last one's step.
  - k > 0, a separate tail (``--foml-tail k``): ``inner_iters - 1`` mini-batches of the
    ``train_shots`` examples, then one step on all k further examples per class, never seen
    by the inner loop. One difference to that code: its tail is carved out of
    ``train_shots``; here it is drawn in addition, so ``train_shots`` means the same for both
    algorithms.

The inner loss: classification minimises the *summed* cross-entropy of a mini-batch (the
paper's TF code differentiates the vector of per-example losses); sine regression the mean
squared error (``metatrain.losses``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol

import numpy as np
import torch

from .data import batches_in_order
from .losses import MSE, SUMMED_CROSS_ENTROPY, Loss

__all__ = [
    "ADAM_EPS",
    "ALGORITHMS",
    "Adapter",
    "Algorithm",
    "FOMAML",
    "Reptile",
    "Settings",
    "TaskTensors",
    "algorithm_of",
    "meta_step_size",
]

ADAM_EPS = 1e-8  # TensorFlow's AdamOptimizer default, used by the paper

# A training task as the algorithms need it: (support_x, support_y, tail_x, tail_y).
TaskTensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class Settings(Protocol):
    """The config fields an algorithm reads (``metatrain.Config`` has them all)."""

    @property
    def algorithm(self) -> str: ...
    @property
    def is_classification(self) -> bool: ...
    @property
    def inner_iters(self) -> int: ...
    @property
    def train_shots(self) -> int: ...
    @property
    def fomaml_tail_shots(self) -> int: ...
    @property
    def meta_iters(self) -> int: ...
    @property
    def meta_step(self) -> float: ...
    @property
    def meta_step_final(self) -> float: ...


class Adapter(Protocol):
    """What ``Algorithm.task_share`` trains: the engine's learner (one task) or stacked
    weights (many tasks at once, each tensor with a leading task dimension)."""

    @property
    def params(self) -> Sequence[torch.Tensor]: ...

    def adapt(self, x: torch.Tensor, y: torch.Tensor, order: np.ndarray) -> None:
        """One inner step per row of ``order`` (example indices of (x, y))."""

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One inner step on the whole batch (x, y)."""


def meta_step_size(config: Settings, iteration: int) -> float:
    """Outer step size of meta-iteration ``iteration`` (1-based), annealed linearly.

    The paper's code: ``frac = i / meta_iters`` with its 0-based i, then
    ``frac * meta_step_final + (1 - frac) * meta_step``.
    """
    frac = (iteration - 1) / config.meta_iters
    return frac * config.meta_step_final + (1 - frac) * config.meta_step


class Algorithm:
    """A first-order meta-learning algorithm. Subclasses set the class attributes and
    implement ``task_share`` and ``outer_update``."""

    name: ClassVar[str]  # the config's ``algorithm`` value
    label: ClassVar[str]  # for people
    description: ClassVar[str]
    # Config fields only this algorithm reads, with their smallest allowed value.
    fields: ClassVar[dict[str, int]] = {}

    def loss(self, config: Settings) -> Loss:
        """What the inner loop minimises (see the module docstring)."""
        return SUMMED_CROSS_ENTROPY if config.is_classification else MSE

    def inner_steps(self, config: Settings) -> int:
        """Mini-batches a task's inner loop draws from its ``train_shots`` examples."""
        return config.inner_iters

    def tail_shots(self, config: Settings) -> int:
        """Examples per class a training task carries besides its ``train_shots``."""
        return 0

    def training_shots(self, config: Settings) -> int:
        """Examples per class a training task draws."""
        return config.train_shots + self.tail_shots(config)

    def explain_training_shots(self, config: Settings) -> str:
        """``training_shots`` in words, for error messages: ``"train_shots = 10"`` or
        ``"train_shots + fomaml_tail_shots = 10 + 5 = 15"``."""
        tail = self.tail_shots(config)
        if not tail:
            return f"train_shots = {config.train_shots}"
        fields = " + ".join(["train_shots", *self.fields])
        return f"{fields} = {config.train_shots} + {tail} = {self.training_shots(config)}"

    def first_batch(
        self, task: TaskTensors, order: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch ``task_share``'s first inner step takes: the first row of ``order``, or
        the tail batch where ``order`` has none (the engine computes it ahead)."""
        if len(order):
            return next(batches_in_order(task[0], task[1], order[:1]))
        return task[2], task[3]

    def task_share(
        self,
        adapter: Adapter,
        task: TaskTensors,
        order: np.ndarray,
        scratch: list[torch.Tensor],
    ) -> Sequence[torch.Tensor]:
        """Train ``adapter`` on one task from its current weights (theta); the task's share of
        the update, summed over the meta-batch by the caller. ``scratch``: a buffer shaped as
        the weights, the algorithm's to use. The share may be the adapter's own tensors:
        read it before they change."""
        raise NotImplementedError

    def outer_update(
        self,
        params: Sequence[torch.Tensor],
        theta: Sequence[torch.Tensor],
        total: list[torch.Tensor],
        tasks: int,
        step_size: float,
    ) -> None:
        """theta's update in place, from ``params`` = theta and ``total`` = the sum of the
        ``tasks`` shares (a buffer the update may overwrite)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Reptile(Algorithm):
    """theta <- theta + eps * (mean_i phi_i - theta)."""

    name = "reptile"
    label = "Reptile"
    description = "move the meta-weights towards the weights adapted to each task"

    def task_share(
        self,
        adapter: Adapter,
        task: TaskTensors,
        order: np.ndarray,
        scratch: list[torch.Tensor],
    ) -> Sequence[torch.Tensor]:
        adapter.adapt(task[0], task[1], order)
        return [p.detach() for p in adapter.params]  # phi_i

    def outer_update(
        self,
        params: Sequence[torch.Tensor],
        theta: Sequence[torch.Tensor],
        total: list[torch.Tensor],
        tasks: int,
        step_size: float,
    ) -> None:
        with torch.no_grad():
            torch._foreach_div_(total, float(tasks))  # mean_i phi_i
            torch._foreach_sub_(total, list(theta))
            torch._foreach_add_(list(params), total, alpha=step_size)


class FOMAML(Algorithm):
    """theta <- theta + eps * mean_i (the last inner step's update: on the last mini-batch
    (``fomaml_tail_shots`` 0) or on a held-out tail batch)."""

    name = "fomaml"
    label = "FOMAML"
    description = (
        "first-order MAML: the last inner step's update, on the last mini-batch "
        "(fomaml_tail_shots 0) or on a held-out tail batch"
    )
    fields = {"fomaml_tail_shots": 0}

    def inner_steps(self, config: Settings) -> int:
        if config.fomaml_tail_shots == 0:
            return config.inner_iters  # the last mini-batch is the tail
        return config.inner_iters - 1  # the last step is the separate tail's

    def tail_shots(self, config: Settings) -> int:
        return config.fomaml_tail_shots

    def task_share(
        self,
        adapter: Adapter,
        task: TaskTensors,
        order: np.ndarray,
        scratch: list[torch.Tensor],
    ) -> Sequence[torch.Tensor]:
        # A task without tail examples (fomaml_tail_shots 0) shares its tail: the last row of
        # ``order``, on the last axis but one (``order`` is (steps, batch), or (tasks, steps,
        # batch) when stacked).
        shared = task[2].numel() == 0
        adapter.adapt(task[0], task[1], order[..., :-1, :] if shared else order)
        params = [p.detach() for p in adapter.params]
        with torch.no_grad():
            torch._foreach_copy_(scratch, params)  # phi_i'
        if shared:
            adapter.adapt(task[0], task[1], order[..., -1:, :])
        else:
            adapter.step(task[2], task[3])
        with torch.no_grad():
            torch._foreach_sub_(scratch, [p.detach() for p in adapter.params])
            torch._foreach_neg_(scratch)  # phi_i - phi_i'
        return scratch

    def outer_update(
        self,
        params: Sequence[torch.Tensor],
        theta: Sequence[torch.Tensor],
        total: list[torch.Tensor],
        tasks: int,
        step_size: float,
    ) -> None:
        with torch.no_grad():
            torch._foreach_add_(list(params), total, alpha=step_size / tasks)


#: name -> the algorithm; the config's ``algorithm`` field takes these names.
ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (Reptile(), FOMAML())}


def algorithm_of(config: Settings) -> Algorithm:
    """The algorithm ``config.algorithm`` names."""
    return ALGORITHMS[config.algorithm]
