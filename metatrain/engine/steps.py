"""One inner step, chosen once per learner: how its gradients are computed and applied.

Every kind computes the same step, the gradient of the learner's loss at its weights and the
inner optimizer's update, bit for bit where the device and optimizer allow (tested against
``metatrain.reference``):

- ``autograd``: the model forward, ``torch.autograd.grad``, the update. Any model, any device.
- ``by_hand``: a CPU conv net's forward and backward from autograd's own kernel calls, without
  its graph (``metatrain.engine.by_hand.ManualBackward``).
- ``helper_thread``: the same on two threads: a helper takes the convolutions' weight
  gradients and most of Adam's update, and computes the next tasks' first steps in its spare
  time (``ThreadedBackward``). For a process with a second core to itself.
- ``cuda_graph``: on a GPU, the whole step (forward, backward, Adam) captured once per input
  shape and replayed (``metatrain.engine.cuda_graphs``); eager autograd steps if a capture
  fails.

The update is chosen once too: plain SGD as one ``_foreach_add_``, Adam on the CPU over flat
buffers (``metatrain.engine.flat_adam``), or the optimizer's own ``step``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import ClassVar, Literal

import torch
from torch import nn

from ..losses import Loss
from .by_hand import ManualBackward, Pending, ThreadedBackward, Update
from .cuda_graphs import GraphedSteps, graphs_supported
from .flat_adam import FlatAdam, torch_step

__all__ = [
    "STEP_KINDS",
    "StepKind",
    "InnerStep",
    "AutogradStep",
    "ByHandStep",
    "HelperThreadStep",
    "GraphStep",
    "fastest_step",
    "supported_steps",
    "make_update",
    "build_step",
]

StepKind = Literal["autograd", "by_hand", "helper_thread", "cuda_graph"]
STEP_KINDS: tuple[StepKind, ...] = ("autograd", "by_hand", "helper_thread", "cuda_graph")

# ``apply(grads)``: the inner optimizer's update for one gradient per parameter.
Apply = Callable[[Sequence[torch.Tensor]], None]


def supported_steps(
    model: nn.Module, params: Sequence[torch.Tensor], optimizer_name: str
) -> list[StepKind]:
    """The step kinds that can run ``model`` with these weights and optimizer."""
    kinds: list[StepKind] = ["autograd"]
    if ManualBackward.supports(model):
        kinds += ["by_hand", "helper_thread"]
    if graphs_supported(list(params), optimizer_name):
        kinds.append("cuda_graph")
    return kinds


def fastest_step(
    model: nn.Module,
    params: Sequence[torch.Tensor],
    optimizer_name: str,
    *,
    cuda_graphs: bool = True,
    helper_thread: bool = False,
) -> StepKind:
    """The fastest kind that applies: CUDA graphs on a GPU (unless ``cuda_graphs`` is off),
    the helper thread where asked for, by hand for CPU conv nets, else autograd."""
    kinds = supported_steps(model, params, optimizer_name)
    if cuda_graphs and "cuda_graph" in kinds:
        return "cuda_graph"
    if helper_thread and "helper_thread" in kinds:
        return "helper_thread"
    if "by_hand" in kinds:
        return "by_hand"
    return "autograd"


def make_update(
    optimizer_name: str,
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.Tensor],
    flat_adam: FlatAdam | None,
) -> Apply:
    """The inner optimizer's update for a step's gradients (not used by CUDA graphs, which
    capture ``optimizer.step`` itself)."""
    weights = list(params)
    if optimizer_name == "sgd":
        # What torch.optim.SGD(foreach=True) does without momentum or weight decay, minus its
        # per-call bookkeeping and the .grad buffers: bit-identical (tested), and on the sine
        # MLP that bookkeeping is most of the step. The optimizer keeps the learning rate.
        group = optimizer.param_groups[0]

        def sgd(grads: Sequence[torch.Tensor]) -> None:
            with torch.no_grad():
                torch._foreach_add_(weights, list(grads), alpha=-group["lr"])

        return sgd
    if flat_adam is not None:
        return flat_adam.step
    return functools.partial(torch_step, optimizer, weights)


class InnerStep:
    """One inner step in place: ``step(x, y)`` updates the weights and returns the batch's
    (output, loss). ``first``: that step's gradients, already being computed (``later``)."""

    kind: ClassVar[StepKind]
    # The optimizer's state must be reset and restored in place (captured graphs hold its
    # addresses).
    fixed_addresses: ClassVar[bool] = False
    # ``later`` computes gradients ahead, in spare time.
    computes_ahead: ClassVar[bool] = False

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, first: Pending | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def later(
        self, x: torch.Tensor, y: torch.Tensor, weights: Sequence[torch.Tensor]
    ) -> Pending | None:
        """The gradients of (x, y) at ``weights``, computed in spare time; None where this
        kind has none."""
        return None

    def settle(self) -> None:
        """Wait for updates a step left running beside the caller (none here)."""

    def close(self) -> None:
        """Release threads or graphs (the step still works afterwards where it can)."""

    def state_replaced(self) -> None:
        """The optimizer's state tensors were replaced, not written in place."""


class AutogradStep(InnerStep):
    kind = "autograd"

    def __init__(
        self, model: nn.Module, params: Sequence[torch.Tensor], loss: Loss, apply: Apply
    ) -> None:
        self.model, self.params, self.loss, self.apply = model, list(params), loss, apply

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, first: Pending | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(x)
        loss = self.loss(out, y)
        self.apply(torch.autograd.grad(loss, self.params))
        return out, loss


class ByHandStep(InnerStep):
    kind = "by_hand"

    def __init__(self, manual: ManualBackward, apply: Apply) -> None:
        self.manual, self.apply = manual, apply

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, first: Pending | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out, loss, grads = self.manual(x, y)
        self.apply(grads)
        return out, loss


class HelperThreadStep(InnerStep):
    """By hand on two threads. With Adam over flat buffers the update is taken in two ranges,
    the later layers' on the helper, whose tail overlaps the next step's first layer: a step
    may return before every weight is updated, and ``settle`` (or the next step, where it
    must) waits for it."""

    kind = "helper_thread"
    computes_ahead = True

    def __init__(self, threaded: ThreadedBackward, apply: Apply, flat_adam: FlatAdam | None):
        self.threaded, self.apply, self.flat_adam = threaded, apply, flat_adam

    def _in_place_update(self) -> Update | None:
        """This step's Adam update by ranges of weights (one step counted), where the helper
        can apply it; None where it cannot."""
        if self.flat_adam is None or not self.threaded.updates_in_place:
            return None
        scalars = self.flat_adam.begin_step()
        return None if scalars is None else functools.partial(self.flat_adam.apply, scalars)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, first: Pending | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if first is not None:
            self.threaded.settle()  # the weights must be those the gradients were computed at
            out, loss, grads = first.result()
            update = self._in_place_update()
            if update is None:
                self.apply(grads)
            else:
                self.threaded.update(update, grads)
            return out, loss
        update = self._in_place_update()
        out, loss, grads = self.threaded(x, y, update)
        if update is None:
            self.apply(grads)
        return out, loss

    def later(
        self, x: torch.Tensor, y: torch.Tensor, weights: Sequence[torch.Tensor]
    ) -> Pending | None:
        return self.threaded.later(x, y, weights)

    def settle(self) -> None:
        self.threaded.settle()

    def close(self) -> None:
        self.threaded.close()


class GraphStep(InnerStep):
    """Replayed from a CUDA graph; the outputs are the graph's buffers, which the next step
    overwrites. After a failed capture, eager autograd steps (``eager``)."""

    kind = "cuda_graph"
    fixed_addresses = True

    def __init__(self, graphs: GraphedSteps, eager: InnerStep) -> None:
        self.graphs, self.eager = graphs, eager

    @property
    def replaying(self) -> bool:
        """False after a failed capture."""
        return self.graphs.failed is None

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, first: Pending | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        replayed = self.graphs.step(x, y)
        if replayed is None:
            return self.eager(x, y)
        return replayed

    def close(self) -> None:
        self.graphs.invalidate()

    def state_replaced(self) -> None:
        self.graphs.invalidate()


def build_step(
    kind: StepKind,
    model: nn.Module,
    params: Sequence[torch.Tensor],
    optimizer_name: str,
    optimizer: torch.optim.Optimizer,
    loss: Loss,
    flat_adam: FlatAdam | None,
) -> InnerStep:
    """The step of ``kind`` (one of ``supported_steps``); ``optimizer`` must be capturable
    for ``cuda_graph``."""
    if kind not in supported_steps(model, params, optimizer_name):
        raise ValueError(f"a {kind!r} step cannot run this model and optimizer")
    apply = make_update(optimizer_name, optimizer, params, flat_adam)
    autograd = AutogradStep(model, params, loss, apply)
    if kind == "cuda_graph":
        return GraphStep(GraphedSteps(model, list(params), optimizer, loss), autograd)
    if kind == "helper_thread":
        return HelperThreadStep(ThreadedBackward(model, params, loss), apply, flat_adam)
    if kind == "by_hand":
        return ByHandStep(ManualBackward(model, params, loss), apply)
    return autograd
