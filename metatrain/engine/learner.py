"""The learner: one network, its inner optimizer and its inner step, reused for every task.

A task never copies the network: the meta-weights are kept apart (``copy_params``) and put
back in place (``load_params``, ``torch._foreach_copy_``), so the optimizer, a captured CUDA
graph or a helper thread keep pointing at the same tensors for the whole run. How a step is
computed (``metatrain.engine.steps``) is chosen once, when the learner is built.

``keep_state`` (``keep_adam_state`` with Adam): the optimizer's moments carry over from task
to task during training; otherwise each task starts from a fresh optimizer.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ..algorithms import ADAM_EPS, algorithm_of
from ..config import Config
from ..data import batch_order, batches_in_order
from ..losses import Loss
from .by_hand import Pending
from .flat_adam import FlatAdam
from .steps import GraphStep, InnerStep, StepKind, build_step, fastest_step

__all__ = ["Learner", "InnerStats", "StepRecorder", "StepSink", "Snapshot"]

# An optimizer's per-parameter state (Adam: step, moments), keyed by parameter.
Snapshot = dict[Any, dict[str, Any]]


class StepSink(Protocol):
    """Told of every inner step: its mean loss per example, correct predictions (None
    without classes) and batch size."""

    def add(self, mean_loss: torch.Tensor, correct: torch.Tensor | None, n: int) -> None: ...


class InnerStats:
    """Running sums of the inner loop's loss and accuracy, kept as tensors (no per-step sync).

    Reported ``inner_loss``: the per-example mean loss averaged over every inner step of the
    meta-batch (measured before each step's update); ``inner_accuracy`` likewise."""

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


class StepRecorder:
    """Records each inner step's (mean loss, correct, examples), to be added up later in task
    order (by the meta-step, whichever process trained the task)."""

    def __init__(self) -> None:
        self.steps: list[tuple[torch.Tensor, torch.Tensor | None, int]] = []

    def add(self, mean_loss: torch.Tensor, correct: torch.Tensor | None, n: int) -> None:
        self.steps.append((mean_loss, correct, n))


class Learner:
    """One network and one inner optimizer, reused for every task of a run.

    ``step``: how inner steps are computed (``metatrain.engine.steps``); None picks the
    fastest that applies, with ``cuda_graphs`` and ``helper_thread`` saying whether those
    may be used. ``capturable``: Adam's ``capturable`` (default: with CUDA graphs only).
    ``stats``: told of every inner step while set.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        loss: Loss,
        optimizer: str = "adam",
        lr: float = 1e-3,
        beta2: float = 0.999,
        keep_state: bool = True,
        step: StepKind | None = None,
        cuda_graphs: bool = True,
        helper_thread: bool = False,
        capturable: bool | None = None,
    ) -> None:
        self.model = model
        self.params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
        self.loss = loss
        self.optimizer_name = optimizer
        if step is None:
            step = fastest_step(
                model, self.params, optimizer, cuda_graphs=cuda_graphs, helper_thread=helper_thread
            )
        # CUDA graphs capture Adam's step: its step count must live on the GPU. (Eager steps
        # with a capturable Adam compute what the graphs replay, for comparisons.)
        self._capturable = step == "cuda_graph" if capturable is None else capturable
        if optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
                self.params,
                lr=lr,
                betas=(0.0, beta2),
                eps=ADAM_EPS,
                foreach=True,
                capturable=self._capturable,
            )
        elif optimizer == "sgd":
            # Kept for its state_dict and lr (checkpoints, evaluation); the step applies the
            # update itself.
            self.optimizer = torch.optim.SGD(self.params, lr=lr, foreach=True)
        else:
            raise ValueError(f"unknown inner optimizer {optimizer!r}")
        self.keep_state = keep_state and optimizer == "adam"
        # Adam on the CPU: all weights in one go (metatrain.engine.flat_adam), bit-identical.
        self.flat_adam = (
            FlatAdam(self.optimizer)
            if optimizer == "adam" and FlatAdam.applies_to(self.optimizer)
            else None
        )
        self._step: InnerStep = build_step(
            step, model, self.params, optimizer, self.optimizer, loss, self.flat_adam
        )
        self.stats: StepSink | None = None
        self._first: Pending | None = None

    @classmethod
    def from_config(
        cls,
        model: nn.Module,
        config: Config,
        *,
        step: StepKind | None = None,
        cuda_graphs: bool = True,
        helper_thread: bool = False,
        capturable: bool | None = None,
    ) -> Learner:
        return cls(
            model,
            loss=algorithm_of(config).loss(config),
            optimizer=config.inner_optimizer,
            lr=config.inner_lr,
            beta2=config.adam_beta2,
            keep_state=config.keep_adam_state,
            step=step,
            cuda_graphs=cuda_graphs,
            helper_thread=helper_thread,
            capturable=capturable,
        )

    @property
    def classification(self) -> bool:
        return self.loss.classifies

    @property
    def inner_step(self) -> InnerStep:
        """The step function chosen at construction."""
        return self._step

    @property
    def step_kind(self) -> StepKind:
        """How inner steps are computed: "autograd", "by_hand", "helper_thread", "cuda_graph"."""
        return self._step.kind

    @property
    def computes_ahead(self) -> bool:
        """Whether ``gradients_later`` computes anything (the helper thread)."""
        return self._step.computes_ahead

    @property
    def uses_cuda_graphs(self) -> bool:
        """Whether inner steps replay CUDA graphs (False after a failed capture)."""
        return isinstance(self._step, GraphStep) and self._step.replaying

    def close(self) -> None:
        """Stop the helper thread, if any."""
        self._step.close()

    # --- the inner loop -------------------------------------------------------------------

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimizer step on the batch (x, y)."""
        self._take_step(x, y, settle=True)

    def adapt(self, x: torch.Tensor, y: torch.Tensor, order: np.ndarray) -> None:
        """One step per row of ``order`` (example indices drawn by ``batch_order``)."""
        last = len(order) - 1
        for i, (xb, yb) in enumerate(batches_in_order(x, y, order)):
            self._take_step(xb, yb, settle=i == last)

    def adapt_random(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        num_batches: int,
        rng: np.random.Generator,
    ) -> None:
        """``num_batches`` steps on the paper's mini-batches (without replacement) of (x, y)."""
        self.adapt(x, y, batch_order(len(x), batch_size, num_batches, rng))

    def _take_step(self, x: torch.Tensor, y: torch.Tensor, settle: bool) -> None:
        """``settle=False``: may return before the helper thread has updated every weight,
        for a caller whose next act is another step (which waits where it must)."""
        first, self._first = self._first, None
        out, loss = self._step(x, y, first)
        if self.stats is not None:
            with torch.no_grad():
                n = len(y)
                correct = (out.argmax(1) == y).sum() if self.loss.classifies else None
                self.stats.add(self.loss.per_example(loss.detach(), n), correct, n)
        if settle:
            self._step.settle()

    def gradients_later(
        self, x: torch.Tensor, y: torch.Tensor, weights: Sequence[torch.Tensor]
    ) -> Pending | None:
        """The output, loss and gradients of the batch (x, y) at ``weights`` (in ``params``
        order), computed in spare time where the step has some (the helper thread); else
        None. Give the result to ``begin_task`` when the model holds those weights again."""
        return self._step.later(x, y, weights)

    def settle(self) -> None:
        """Wait for a step's updates still running beside this thread."""
        self._step.settle()

    def begin_task(self, first: Pending | None = None) -> None:
        """A task starts: forget the optimizer's moments unless they are meant to persist.
        ``first``: its first step's gradients, already being computed (``gradients_later``)."""
        if not self.keep_state:
            self.reset_optimizer_state()
        self._first = first

    def drop_first(self) -> None:
        """Forget a first step's gradients not taken (a task that failed before its first
        step); the caller cancels them."""
        self._first = None

    # --- optimizer state ------------------------------------------------------------------

    def reset_optimizer_state(self) -> None:
        """A fresh optimizer. With CUDA graphs in place (step 0 and zero moments are what a
        fresh Adam starts from), so the graphs' addresses stay valid."""
        if self._step.fixed_addresses:
            tensors = [v for s in self.optimizer.state.values() for v in s.values()]
            if tensors and all(torch.is_tensor(v) for v in tensors):
                with torch.no_grad():
                    torch._foreach_zero_(tensors)
                return
            self._step.state_replaced()
        self.optimizer.state.clear()

    def load_optimizer_state(self, state_dict: dict[str, Any]) -> None:
        """Load a saved optimizer state (a checkpoint's), whichever device saved it.

        ``capturable`` is a property of this learner, not of the saved run: a run trained with
        CUDA graphs can be resumed or evaluated on the CPU and the other way round.
        """
        # A copy: torch keeps the given tensors where their dtype and device already fit, so
        # two learners loaded from one live state_dict would share (and both advance) them.
        self.optimizer.load_state_dict(copy.deepcopy(state_dict))
        for group in self.optimizer.param_groups:
            if "capturable" in group:
                group["capturable"] = self._capturable
        self._step.state_replaced()

    def optimizer_snapshot(self) -> Snapshot:
        """A copy of the optimizer's per-parameter state (Adam: step, moments)."""
        return {
            p: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
            for p, s in self.optimizer.state.items()
        }

    def optimizer_restore(self, snapshot: Snapshot) -> None:
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
        if not snapshot:
            self.reset_optimizer_state()
            return
        self._step.state_replaced()
        state.clear()
        for p, s in snapshot.items():
            state[p] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}

    # --- weights --------------------------------------------------------------------------

    def copy_params(self) -> list[torch.Tensor]:
        """A detached copy of the current weights."""
        with torch.no_grad():
            return [p.detach().clone() for p in self.params]

    def load_params(self, values: Sequence[torch.Tensor]) -> None:
        """Overwrite the weights in place (the optimizer keeps pointing at the same tensors)."""
        with torch.no_grad():
            torch._foreach_copy_(self.params, list(values))
