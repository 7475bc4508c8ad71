"""torch.optim.Adam's update for a whole network in a handful of tensor operations (CPU).

On the CPU, ``torch.optim.Adam(foreach=True)`` runs each of its ten operations once per
parameter tensor (the CPU's foreach kernels are loops) and reads every tensor's step count with
``.item()``, a noticeable share of a small network's inner step (docs/engine.md). Here the
optimizer's moments live in three flat buffers, and its ``state`` holds
views into them, so each operation of Adam's runs once over all the numbers, and only copying
the gradients in and the final ``addcdiv_`` into the weights go tensor by tensor.

The operations and their order are torch's own (``_multi_tensor_adam``, which does per tensor
what ``_single_tensor_adam`` does), and an element is computed the same way whichever tensor
it lies in, so the weights are bit-identical to ``torch.optim.Adam``'s (tested at one and two
threads, and on tensors whose sizes leave CPU vector loops a remainder). The optimizer stays
the owner of the state: ``state_dict()``, checkpoints and snapshots see ordinary Adam state,
and state loaded from elsewhere is copied into the buffers at the next step.

A step can also be taken in pieces (``begin_step``, then ``apply`` per range of weights, in
any order and on any thread): the same element-wise operations on slices of the buffers, so
the same bits (tested). ``metatrain.engine.by_hand``'s helper thread updates each part of the
network as soon as its backward pass is done with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["FlatAdam", "StepScalars", "torch_step"]

_STATE_KEYS = ("step", "exp_avg", "exp_avg_sq")  # torch's own order (Adam._init_group)


@dataclass(frozen=True)
class StepScalars:
    """The numbers one Adam step uses for every weight (torch's ``_multi_tensor_adam``)."""

    beta1: float
    beta2: float
    eps: float
    bias_correction2_sqrt: float
    step_size: float


def _dense(p: torch.Tensor) -> bool:
    return p.is_contiguous() or (
        p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
    )


def _compact_state_dict(
    optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]
) -> dict[str, Any]:
    """``state_dict()`` with tensors of their own instead of views into the flat buffers: a
    pickled view carries its whole buffer (the Omniglot net's state pickled to 16 MB instead
    of 0.9 MB for the task workers), and a copy does not change as training goes on."""
    # New dicts: torch packs the optimizer's own per-weight dicts, which must keep the views.
    state_dict["state"] = {
        index: {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
        for index, state in state_dict["state"].items()
    }
    return state_dict


class FlatAdam:
    """Steps ``optimizer`` (a plain ``torch.optim.Adam``) with flat buffers; see the module."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        if not self.applies_to(optimizer):
            raise ValueError("FlatAdam needs a plain CPU torch.optim.Adam over float32 weights")
        self.optimizer = optimizer
        self.params: list[torch.Tensor] = list(optimizer.param_groups[0]["params"])
        total = sum(p.numel() for p in self.params)
        self._grads = torch.empty(total)
        self._exp_avg = torch.zeros(total)
        self._exp_avg_sq = torch.zeros(total)
        self._denom = torch.empty(total)
        self._steps = torch.zeros(len(self.params))
        self._layout: list[tuple[torch.Size, tuple[int, ...]]] = []
        self._offsets = [0]  # where each weight starts in the buffers, and their end
        for p in self.params:
            self._offsets.append(self._offsets[-1] + p.numel())
        self._views: dict[str, list[torch.Tensor]] = {}
        optimizer.register_state_dict_post_hook(_compact_state_dict)

    @staticmethod
    def applies_to(optimizer: torch.optim.Optimizer) -> bool:
        """A plain Adam: one group of dense float32 CPU weights, none of Adam's options on
        (amsgrad, weight decay, maximize, capturable, fused, differentiable), float
        hyperparameters. Anything else keeps torch's own step."""
        if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
            return False
        group = optimizer.param_groups[0]
        if any(group.get(k) for k in ("amsgrad", "maximize", "capturable", "differentiable")):
            return False
        if group.get("fused") or group.get("weight_decay") or group.get("decoupled_weight_decay"):
            return False
        if not all(
            isinstance(v, float | int) for v in (group["lr"], group["eps"], *group["betas"])
        ):
            return False
        return all(
            p.device.type == "cpu" and p.dtype == torch.float32 and not p.is_sparse and _dense(p)
            for p in group["params"]
        )

    # --- the buffers and the optimizer's state ---------------------------------------------

    def _make_views(self) -> None:
        """Views shaped and strided like each weight (channels_last included), as torch's
        ``zeros_like(p, memory_format=torch.preserve_format)`` state would be."""
        self._layout = [(p.shape, p.stride()) for p in self.params]
        buffers = {
            "grads": self._grads,
            "exp_avg": self._exp_avg,
            "exp_avg_sq": self._exp_avg_sq,
            "denom": self._denom,
        }
        views: dict[str, list[torch.Tensor]] = {name: [] for name in buffers}
        offset = 0
        for p in self.params:
            for name, flat in buffers.items():
                views[name].append(flat.as_strided(p.shape, p.stride(), offset))
            offset += p.numel()
        views["step"] = [self._steps[i] for i in range(len(self.params))]
        self._views = views

    def _bound(self) -> bool:
        """Whether the optimizer's state is still the views into this object's buffers."""
        state = self.optimizer.state
        views = self._views
        if not views or len(state) != len(self.params) or self.params[0].device.type != "cpu":
            return False
        for i, p in enumerate(self.params):
            s = state.get(p)
            if (
                s is None
                or s.get("exp_avg_sq") is not views["exp_avg_sq"][i]
                or s.get("exp_avg") is not views["exp_avg"][i]
                or s.get("step") is not views["step"][i]
            ):
                return False
        return True

    def _bind(self) -> bool:
        """Point the optimizer's state at the buffers, taking over whatever state it holds
        (none: a fresh Adam, all zeros). False where that state cannot be taken over (steps
        that differ between tensors, weights moved off the CPU): torch then steps as usual."""
        if not self.applies_to(self.optimizer):
            return False
        if [(p.shape, p.stride()) for p in self.params] != self._layout:
            self._make_views()
        state = self.optimizer.state
        held = [state.get(p) for p in self.params]
        if all(not s for s in held):
            self._zero()
        else:
            if not all(s is not None and set(s) == set(_STATE_KEYS) for s in held):
                return False
            steps = {float(s["step"]) for s in held}  # type: ignore[index]
            if len(steps) != 1:
                return False
            with torch.no_grad():
                for key in ("exp_avg", "exp_avg_sq"):
                    torch._foreach_copy_(self._views[key], [s[key] for s in held])  # type: ignore[index]
                self._steps.fill_(steps.pop())
        for i, p in enumerate(self.params):
            state[p] = {key: self._views[key][i] for key in _STATE_KEYS}
        return True

    def _zero(self) -> None:
        """Step 0 and zero moments: what a fresh Adam starts from (in place, keeping the state's
        tensors, so a new task costs no allocation)."""
        with torch.no_grad():
            self._steps.zero_()
            self._exp_avg.zero_()
            self._exp_avg_sq.zero_()

    def reset(self) -> bool:
        """A fresh optimizer state in place; False where the state is not this object's."""
        if not self._bound():
            return False
        self._zero()
        return True

    # --- the update ------------------------------------------------------------------------

    def step(self, grads: Sequence[torch.Tensor]) -> None:
        """One Adam step of every weight, with ``grads`` in ``params`` order."""
        scalars = self.begin_step()
        if scalars is None:
            torch_step(self.optimizer, self.params, grads)
            return
        self.apply(scalars, 0, len(self.params), grads)

    def begin_step(self) -> StepScalars | None:
        """Count one step and return its scalars, for ``apply``; None where the optimizer's
        state cannot be kept in the buffers (then use ``torch_step``)."""
        if not self._bound() and not self._bind():
            return None
        group = self.optimizer.param_groups[0]
        lr, eps = group["lr"], group["eps"]
        beta1, beta2 = group["betas"]
        with torch.no_grad():
            self._steps.add_(1.0)
            step = self._steps[0].item()
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        return StepScalars(
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            bias_correction2_sqrt=bias_correction2**0.5,
            step_size=(lr / bias_correction1) * -1,
        )

    def apply(
        self, scalars: StepScalars, first: int, last: int, grads: Sequence[torch.Tensor]
    ) -> None:
        """The step counted by ``begin_step`` for ``params[first:last]`` (``grads`` in
        ``params`` order; only those entries are read). The weights lie side by side in the
        buffers, so a range is one slice of each: the ranges of a step may be applied in any
        order, on any thread, each once, with the bits of one whole step (Adam works element
        by element)."""
        views = self._views
        start, stop = self._offsets[first], self._offsets[last]
        grad = self._grads[start:stop]
        exp_avg = self._exp_avg[start:stop]
        exp_avg_sq = self._exp_avg_sq[start:stop]
        denom = self._denom[start:stop]
        with torch.no_grad():
            torch._foreach_copy_(views["grads"][first:last], list(grads[first:last]))
            exp_avg.lerp_(grad, 1 - scalars.beta1)
            exp_avg_sq.mul_(scalars.beta2)
            exp_avg_sq.addcmul_(grad, grad, value=1 - scalars.beta2)
            torch.sqrt(exp_avg_sq, out=denom)
            denom.div_(scalars.bias_correction2_sqrt)
            denom.add_(scalars.eps)
            torch._foreach_addcdiv_(
                self.params[first:last],
                views["exp_avg"][first:last],
                views["denom"][first:last],
                scalars.step_size,
            )


def torch_step(
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
) -> None:
    """``optimizer``'s own step for ``grads`` (one per weight in ``params``); the ``.grad``
    buffers are let go again afterwards."""
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
