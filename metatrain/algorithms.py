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

import copy
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import Config
from .cuda_graphs import GraphedSteps, graphs_supported
from .data import batch_order, batches_in_order
from .flat_adam import FlatAdam, torch_step
from .stacked import stacks_tasks, train_regression_tasks
from .threaded_backward import (
    ManualBackward,
    Pending,
    ThreadedBackward,
    Update,
    summed_cross_entropy,
)

__all__ = [
    "ADAM_EPS",
    "task_batch_orders",
    "task_update",
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
        cuda_graphs: bool = True,
    ) -> None:
        self.model = model
        self.params: list[nn.Parameter] = [p for p in model.parameters() if p.requires_grad]
        self.classification = classification
        self.optimizer_name = optimizer
        # CUDA graphs (see metatrain.cuda_graphs) need Adam's step count on the GPU.
        use_graphs = cuda_graphs and graphs_supported(self.params, optimizer)
        self._capturable = use_graphs
        if optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
                self.params,
                lr=lr,
                betas=(0.0, beta2),
                eps=ADAM_EPS,
                foreach=True,
                capturable=use_graphs,
            )
        elif optimizer == "sgd":
            # Kept for its state_dict and lr (checkpoints, evaluation); ``step`` applies the
            # update itself.
            self.optimizer = torch.optim.SGD(self.params, lr=lr, foreach=True)
        else:
            raise ValueError(f"unknown inner optimizer {optimizer!r}")
        self.keep_state = keep_state and optimizer == "adam"
        self.graphs = (
            GraphedSteps(model, self.params, self.optimizer, self.loss) if use_graphs else None
        )
        # Adam on the CPU: all weights in one go (see metatrain.flat_adam), bit-identical.
        self.flat_adam = (
            FlatAdam(self.optimizer)
            if optimizer == "adam" and FlatAdam.applies_to(self.optimizer)
            else None
        )
        # Started by ``use_threaded_backward`` where a second core is the run's to use.
        self.threaded: ThreadedBackward | None = None
        # Otherwise a CPU conv net's steps still skip autograd's graph (the same bits, ~12%
        # faster per step on one thread); anything else is differentiated by autograd.
        self.manual = (
            ManualBackward(model, self.params, self._step_loss())
            if ManualBackward.supports(model)
            else None
        )

    def use_threaded_backward(self) -> bool:
        """Compute each inner step's convolution weight gradients on a helper thread
        (``metatrain.threaded_backward``: bit-identical, for CPU conv nets). Only for a process
        that has a second core to itself, and on one torch thread: a second intra-op thread
        would spin beside the helper. Returns whether the helper runs."""
        if self.threaded is None and ThreadedBackward.supports(self.model):
            self.threaded = ThreadedBackward(self.model, self.params, self._step_loss())
        return self.threaded is not None

    def gradients_later(
        self, x: torch.Tensor, y: torch.Tensor, weights: Sequence[torch.Tensor]
    ) -> Pending | None:
        """The output, loss and gradients of the batch (x, y) at ``weights`` (in ``params``
        order), computed by the helper thread in its spare time; None without the helper.
        Give the result to ``step`` when the model holds those weights again."""
        if self.threaded is None:
            return None
        return self.threaded.later(x, y, weights)

    def close(self) -> None:
        """Stop the helper thread, if any (the learner keeps working without it)."""
        if self.threaded is not None:
            self.threaded.close()
            self.threaded = None

    @property
    def uses_cuda_graphs(self) -> bool:
        """Whether inner steps replay CUDA graphs (False after a failed capture)."""
        return self.graphs is not None and self.graphs.failed is None

    @classmethod
    def from_config(cls, model: nn.Module, config: Config, cuda_graphs: bool = True) -> Learner:
        return cls(
            model,
            classification=config.is_classification,
            optimizer=config.inner_optimizer,
            lr=config.inner_lr,
            beta2=config.adam_beta2,
            keep_state=config.keep_adam_state,
            cuda_graphs=cuda_graphs,
        )

    # --- inner loop --------------------------------------------------------------------

    def _step_loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``loss``, by name where it is the summed cross-entropy: then the manual backward
        runs a linear head by hand too."""
        return summed_cross_entropy if self.classification else self.loss

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss the inner optimizer minimises (see the module docstring)."""
        if self.classification:
            return summed_cross_entropy(out, y)
        return F.mse_loss(out, y)

    def step(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        stats: _Stats | None = None,
        computed: Pending | None = None,
        settle: bool = True,
    ) -> None:
        """One optimizer step on the batch (x, y). ``computed``: its gradients, already being
        computed (``gradients_later``) at the weights the model holds now. ``settle=False``:
        may return before the helper thread has updated every weight, for a caller whose
        next act is another ``step`` (which waits where it must) or ``settle``."""
        replayed = None
        if computed is None and self.graphs is not None:
            replayed = self.graphs.step(x, y)
        # Adam's step taken in two ranges on two threads (the later layers' on the helper, whose
        # tail overlaps the next step's first layer), where the helper can.
        update = None
        if computed is not None:
            self.settle()  # the weights must be those the gradients were computed at
            out, loss, grads = computed.result()
            update = self._in_place_update()
            if update is None:
                self._apply_gradients(grads)
            else:
                self.threaded.update(update, grads)  # type: ignore[union-attr]
        elif replayed is not None:
            out, loss = replayed  # the graph's buffers: used below before the next step
        elif self.threaded is not None:
            update = self._in_place_update()
            out, loss, grads = self.threaded(x, y, update)
            if update is None:
                self._apply_gradients(grads)
        elif self.manual is not None:
            out, loss, grads = self.manual(x, y)
            self._apply_gradients(grads)
        else:
            out = self.model(x)
            loss = self.loss(out, y)
            self._apply_gradients(torch.autograd.grad(loss, self.params))
        if stats is not None:
            with torch.no_grad():
                n = len(y)
                if self.classification:
                    stats.add(loss.detach() / n, (out.argmax(1) == y).sum(), n)
                else:
                    stats.add(loss.detach(), None, n)
        if update is not None and settle:
            self.settle()

    def _in_place_update(self) -> Update | None:
        """This step's Adam update by ranges of weights (one step counted), where the threaded
        backward can apply Adam itself; None where it cannot."""
        if self.flat_adam is None or self.threaded is None or not self.threaded.updates_in_place:
            return None
        scalars = self.flat_adam.begin_step()
        return None if scalars is None else functools.partial(self.flat_adam.apply, scalars)

    def settle(self) -> None:
        """Wait for a step's updates still running on the helper thread (``step`` with
        ``settle=False``)."""
        if self.threaded is not None:
            self.threaded.settle()

    def _apply_gradients(self, grads: Sequence[torch.Tensor]) -> None:
        """The inner optimizer's step for ``grads`` (one per parameter), without CUDA graphs."""
        if self.optimizer_name == "sgd":
            # What torch.optim.SGD(foreach=True) does without momentum or weight decay, minus
            # its per-call bookkeeping and the .grad buffers: bit-identical (tested), and
            # 0.17 instead of 0.25 ms per step of the sine MLP, where that overhead is the step.
            with torch.no_grad():
                lr = self.optimizer.param_groups[0]["lr"]
                torch._foreach_add_(self.params, list(grads), alpha=-lr)
            return
        if self.flat_adam is not None:
            self.flat_adam.step(grads)
            return
        torch_step(self.optimizer, self.params, grads)

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
        self.adapt_order(x, y, batch_order(len(x), batch_size, num_batches, rng), stats)

    def adapt_order(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        order: np.ndarray,
        stats: _Stats | None = None,
        first: Pending | None = None,
    ) -> None:
        """One step per row of ``order`` (example indices drawn by ``batch_order``). ``first``:
        the first step's gradients, already being computed (see ``step``)."""
        last = len(order) - 1
        for i, (xb, yb) in enumerate(batches_in_order(x, y, order)):
            self.step(xb, yb, stats, first, settle=i == last)
            first = None

    def begin_task(self) -> None:
        """Forget the optimizer's moments unless they are meant to persist across tasks."""
        if not self.keep_state:
            self.reset_optimizer_state()

    def reset_optimizer_state(self) -> None:
        """A fresh optimizer. With CUDA graphs in place (step 0 and zero moments are what a
        fresh Adam starts from), so the graphs' addresses stay valid."""
        if self.graphs is not None:
            tensors = [v for s in self.optimizer.state.values() for v in s.values()]
            if tensors and all(torch.is_tensor(v) for v in tensors):
                with torch.no_grad():
                    torch._foreach_zero_(tensors)
                return
            self.graphs.invalidate()
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
        if self.graphs is not None:
            self.graphs.invalidate()

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
        if not snapshot:
            self.reset_optimizer_state()
            return
        if self.graphs is not None:
            self.graphs.invalidate()
        state.clear()
        for p, s in snapshot.items():
            state[p] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}


def task_batch_orders(config: Config, task: TaskTensors, rng: np.random.Generator) -> np.ndarray:
    """The inner-loop mini-batches of one training task, drawn from ``rng`` (FOMAML's last
    step, on the tail batch, is not drawn)."""
    steps = config.inner_iters - 1 if config.algorithm == "fomaml" else config.inner_iters
    return batch_order(len(task[0]), config.inner_batch, steps, rng)


def first_batch(task: TaskTensors, order: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch ``task_update`` takes its first inner step on: the first mini-batch of
    ``order``, or FOMAML's tail batch where ``order`` has none."""
    if len(order):
        return next(batches_in_order(task[0], task[1], order[:1]))
    return task[2], task[3]


def task_update(
    learner: Learner,
    config: Config,
    task: TaskTensors,
    order: np.ndarray,
    stats: Any,
    scratch: list[torch.Tensor],
    first: Pending | None = None,
) -> list[torch.Tensor]:
    """Train ``learner`` on one task from its current weights; the task's share of the update.

    Reptile: the adapted weights phi_i (the learner's own tensors: read them before the
    weights are reset). FOMAML: the last inner step's change u_i = phi_i - phi_i', computed
    into ``scratch``. ``stats``: anything with ``_Stats.add``'s signature, told of every inner
    step. ``first``: the first inner step's gradients, already being computed (see
    ``Learner.step``). Shared by the serial loop and the task workers of
    ``metatrain.parallel``, so both compute the same numbers.
    """
    params = learner.params
    if config.algorithm != "fomaml":
        learner.adapt_order(task[0], task[1], order, stats, first)
        return [p.detach() for p in params]
    learner.adapt_order(task[0], task[1], order, stats, first)
    with torch.no_grad():
        torch._foreach_copy_(scratch, [p.detach() for p in params])
    learner.step(task[2], task[3], stats, first if not len(order) else None)
    with torch.no_grad():
        torch._foreach_sub_(scratch, [p.detach() for p in params])
        torch._foreach_neg_(scratch)
    return scratch


class _MetaAlgorithm:
    """Shared plumbing: buffers for the meta-weights and the update, allocated once.

    With a ``pool`` (``metatrain.parallel.TaskPool``) the meta-batch's tasks are trained side by
    side in worker processes; that is only exact when tasks do not share the inner optimizer's
    state, so the pool is refused when the learner keeps Adam's moments across tasks. Tasks
    and their mini-batches are drawn here in the serial order and the shares are summed in
    task order, so the result is bit-identical to the serial loop.
    """

    def __init__(self, learner: Learner, config: Config, stack_tasks: bool = True) -> None:
        self.learner = learner
        self.config = config
        # Regression MLPs with SGD: a meta-batch's tasks adapted at once (metatrain.stacked).
        self.stacked = stack_tasks and config.meta_batch > 1 and stacks_tasks(learner)
        self._theta = learner.copy_params()
        self._acc = [torch.zeros_like(t) for t in self._theta]
        self._scratch = [torch.zeros_like(t) for t in self._theta]

    def step(
        self,
        sample_task: Callable[[], TaskTensors],
        step_size: float,
        rng: np.random.Generator,
        tick: Callable[[], None] | None = None,
        pool: Any = None,
    ) -> dict[str, float]:
        """One outer step over ``meta_batch`` tasks drawn from ``sample_task``."""
        learner = self.learner
        params = learner.params
        with torch.no_grad():
            torch._foreach_copy_(self._theta, [p.detach() for p in params])
            torch._foreach_zero_(self._acc)
        stats = _Stats()
        n = self.config.meta_batch
        if self.stacked:
            tasks, orders = [], []
            for _ in range(n):  # drawn in the one-task loop's order
                tasks.append(sample_task())
                orders.append(task_batch_orders(self.config, tasks[-1], rng))
            step_losses: list[torch.Tensor] = []
            shares = train_regression_tasks(
                learner.model,
                self._theta,
                tasks,
                orders,
                learner.optimizer.param_groups[0]["lr"],
                fomaml=self.config.algorithm == "fomaml",
                step_losses=step_losses,
            )
            batches = [len(o) for o in orders[0]] + (
                [len(tasks[0][3])] if self.config.algorithm == "fomaml" else []
            )
            for t in range(n):  # summed in task order, as the one-task loop does
                for losses, size in zip(step_losses, batches, strict=True):
                    stats.add(losses[t], None, size)
                with torch.no_grad():
                    torch._foreach_add_(self._acc, [share[t] for share in shares])
            if tick is not None:
                tick()
        elif pool is not None:
            if learner.keep_state:
                raise ValueError(
                    "tasks that share Adam's moments (keep_adam_state) cannot run side by side"
                )

            def jobs() -> Iterator[tuple[TaskTensors, np.ndarray]]:
                # Drawn as the pool asks for them, in the serial loop's order.
                for _ in range(n):
                    task = sample_task()
                    yield task, task_batch_orders(self.config, task, rng)

            pool.set_weights(self._theta)
            for share, steps in pool.train_tasks(jobs(), self._acc):
                for mean_loss, correct, examples in steps:
                    stats.add(mean_loss, correct, examples)
                with torch.no_grad():
                    torch._foreach_add_(self._acc, share)
                if tick is not None:
                    tick()
        else:
            drawn = []
            for _ in range(n):  # all drawn first, in the one-task loop's order
                task = sample_task()
                drawn.append((task, task_batch_orders(self.config, task, rng)))
            # Every task starts from theta, so its first step's gradients need nothing from the
            # tasks before it, even with Adam's moments chained: the helper thread (if any)
            # computes them in its spare time. The same kernels, so the same bits.
            firsts: list[Pending | None] = [None] * n
            if learner.threaded is not None:  # else the batches would be gathered for nothing
                for i in range(1, n):
                    firsts[i] = learner.gradients_later(*first_batch(*drawn[i]), self._theta)
            try:
                for (task, order), first in zip(drawn, firsts, strict=True):
                    learner.begin_task()
                    share = task_update(
                        learner, self.config, task, order, stats, self._scratch, first
                    )
                    with torch.no_grad():
                        torch._foreach_add_(self._acc, share)
                    learner.load_params(self._theta)
                    if tick is not None:
                        tick()
            finally:
                # After a failure: the helper drops what is left (a job still reading theta
                # when the next step overwrites it computes numbers nobody takes).
                for pending in firsts:
                    if pending is not None:
                        pending.cancel()
        with torch.no_grad():
            self._apply(params, step_size, n)
        return stats.summary(learner.classification)

    def _apply(self, params: list[nn.Parameter], step_size: float, n: int) -> None:
        raise NotImplementedError


class Reptile(_MetaAlgorithm):
    """theta <- theta + eps * (mean_i phi_i - theta)."""

    def _apply(self, params: list[nn.Parameter], step_size: float, n: int) -> None:
        # params hold theta again; acc = sum_i phi_i  ->  mean_i phi_i - theta
        torch._foreach_div_(self._acc, float(n))
        torch._foreach_sub_(self._acc, self._theta)
        torch._foreach_add_(params, self._acc, alpha=step_size)


class FOMAML(_MetaAlgorithm):
    """theta <- theta + eps * mean_i (last inner step's update, taken on the tail batch)."""

    def _apply(self, params: list[nn.Parameter], step_size: float, n: int) -> None:
        torch._foreach_add_(params, self._acc, alpha=step_size / n)


def make_algorithm(learner: Learner, config: Config, stack_tasks: bool = True) -> Reptile | FOMAML:
    """The algorithm named by ``config.algorithm`` around ``learner``. ``stack_tasks``: adapt
    a meta-batch of regression tasks at once where ``metatrain.stacked`` applies."""
    if config.algorithm == "fomaml":
        return FOMAML(learner, config, stack_tasks)
    return Reptile(learner, config, stack_tasks)
