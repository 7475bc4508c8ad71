"""The inner loop's losses, each defined once, with every form the engine computes it in.

A ``Loss`` is what the inner optimizer minimises on one mini-batch. Besides its plain form
(``loss(output, target)``, differentiated by autograd on every device), a loss may declare
forms that faster code paths use, next to the definition they must agree with:

- ``linear_head``: the loss and its gradients through a ``Flatten``-``Linear`` head, computed
  by hand from autograd's own kernel calls (``metatrain.engine.by_hand`` uses it for the CPU
  conv nets; tested bit-for-bit against autograd on the plain form);
- ``per_task``: one value per task of a stack of tasks (``metatrain.engine.stacked``).

A path checks what the loss declares, never which function it is, so editing a loss edits
every path that computes it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

__all__ = ["Loss", "SummedCrossEntropy", "MeanSquaredError", "SUMMED_CROSS_ENTROPY", "MSE"]

_aten = torch.ops.aten
_SUM = 2  # torch's enum for reduction="sum"

# (output, loss, gradient for the head's input, for its weight, for its bias)
HeadResult = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class Loss:
    """A mini-batch loss. ``classifies``: outputs are class scores (accuracy is reported)."""

    name: ClassVar[str] = ""
    classifies: ClassVar[bool] = False
    has_linear_head: ClassVar[bool] = False
    has_per_task: ClassVar[bool] = False

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def per_example(self, loss: torch.Tensor, examples: int) -> torch.Tensor:
        """The batch's mean loss per example, as reported (``loss`` as returned above)."""
        raise NotImplementedError

    def linear_head(
        self, h: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> HeadResult:
        """The loss of ``Linear(Flatten(h))`` and its gradients, by hand (where
        ``has_linear_head``)."""
        raise NotImplementedError(f"{type(self).__name__} has no by-hand linear head")

    def per_task(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(T,) losses of T tasks' stacked (T, N, ...) outputs (where ``has_per_task``)."""
        raise NotImplementedError(f"{type(self).__name__} has no per-task form")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SummedCrossEntropy(Loss):
    """The paper's classification loss: cross-entropy summed over the batch (its TensorFlow
    code minimises the vector of per-example losses, whose gradient is their sum); for Adam
    the same as the mean up to epsilon."""

    name = "summed_cross_entropy"
    classifies = True
    has_linear_head = True

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target, reduction="sum")

    def per_example(self, loss: torch.Tensor, examples: int) -> torch.Tensor:
        return loss / examples

    def linear_head(
        self, h: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> HeadResult:
        """``self(Linear(Flatten(h)), y)`` with the kernel calls autograd makes for it
        (``linear`` is ``addmm`` with the transposed weight; ``AddmmBackward0`` computes a
        column-major operand's gradient as ``grad.t().mm(mat1)``), so the same bits without
        autograd's graph and engine."""
        flat = h.flatten(1)
        out = torch.addmm(bias, flat, weight.t())
        log_p = torch._log_softmax(out, 1, False)
        loss, total_weight = _aten.nll_loss_forward.default(log_p, y, None, _SUM, -100)
        grad_log_p = _aten.nll_loss_backward.default(
            torch.ones_like(loss), log_p, y, None, _SUM, -100, total_weight
        )
        grad_out = torch._log_softmax_backward_data(grad_log_p, log_p, 1, log_p.dtype)
        return (
            out,
            loss,
            grad_out.mm(weight).view(h.shape),
            grad_out.t().mm(flat),
            grad_out.sum(0),
        )


class MeanSquaredError(Loss):
    """Regression (the sine demo): the mean squared error of the batch."""

    name = "mean_squared_error"
    has_per_task = True

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, target)

    def per_example(self, loss: torch.Tensor, examples: int) -> torch.Tensor:
        return loss

    def per_task(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((output - target) ** 2).flatten(1).mean(1)


SUMMED_CROSS_ENTROPY = SummedCrossEntropy()
MSE = MeanSquaredError()
