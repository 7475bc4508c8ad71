"""The inner step replayed as a CUDA graph: the GPU path's main speed lever.

Why: the paper's networks are tiny, so on a GPU an eager inner step (forward, loss, backward,
Adam) is nothing but kernel launches and Python; captured once as a CUDA graph and replayed,
the same kernels run many times faster (figures in docs/engine.md; the replayed weights are
bit-identical to eager steps with the same capturable optimizer). A graph is captured per
input shape (the training batch, the evaluation batch, FOMAML's tail batch) the first time
that shape is seen.

What a graph needs, and how the Learner keeps it true:
- fixed addresses: the weights are only ever changed in place (``load_params`` copies, the
  outer update adds), and the optimizer's state is reset or restored in place (a fresh Adam
  is step 0 with zero moments, so zeroing is the same as starting afresh);
- Adam with ``capturable=True`` (its step count lives on the GPU). It computes the same
  update in a different order of operations, so its rounding differs from the eager,
  non-capturable Adam's: the difference shows up in the convolution biases, whose gradient
  is zero up to rounding because batch norm removes any constant, so Adam's normalised step
  turns rounding noise into +-lr moves; those biases cannot change the network's output.
- capture does not run the kernels, but the recipe's warm-up steps do: the weights and the
  optimizer state are saved before them and put back after, so a capture changes nothing.

Any failure to capture is reported once (a warning) and the learner carries on eagerly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["GraphedSteps", "graphs_supported"]

WARMUP_STEPS = 3  # PyTorch's recipe warms up on a side stream before capturing


def graphs_supported(params: Sequence[torch.Tensor], optimizer_name: str) -> bool:
    """CUDA graphs are used for Adam on a CUDA device (SGD steps are cheap to launch and the
    sine network is on the CPU in practice)."""
    return optimizer_name == "adam" and bool(params) and params[0].is_cuda


class _Captured:
    """One graph and its static tensors (inputs in, outputs and loss out)."""

    def __init__(
        self, graph: Any, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor, loss: torch.Tensor
    ) -> None:
        self.graph, self.x, self.y, self.out, self.loss = graph, x, y, out, loss


class GraphedSteps:
    """Inner steps of ``model`` with ``optimizer`` and ``loss_fn``, replayed from CUDA graphs.

    ``step(x, y)`` returns (outputs, loss) as tensors that the next step overwrites: read
    them (or compute from them) before then. ``invalidate()`` drops the graphs; call it
    whenever the optimizer's state tensors are replaced rather than written in place.
    """

    def __init__(
        self,
        model: nn.Module,
        params: Sequence[torch.Tensor],
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> None:
        self.model = model
        self.params = list(params)
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self._graphs: dict[tuple[Any, ...], _Captured] = {}
        self.failed: str | None = None
        self.captures = 0

    def invalidate(self) -> None:
        self._graphs.clear()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One step from the graph for this shape (captured now if new); None if graphs
        cannot be used (the caller then steps eagerly)."""
        if self.failed is not None:
            return None
        key = (tuple(x.shape), x.dtype, x.stride(), tuple(y.shape), y.dtype)
        captured = self._graphs.get(key)
        if captured is None:
            try:
                captured = self._capture(x, y)
            except Exception as exc:  # a driver or op that cannot be captured: go eager
                self.failed = f"{type(exc).__name__}: {exc}"
                self._graphs.clear()
                warnings.warn(
                    f"CUDA graph capture failed, continuing without graphs ({self.failed})",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return None
            self._graphs[key] = captured
        captured.x.copy_(x)
        captured.y.copy_(y)
        captured.graph.replay()
        return captured.out, captured.loss

    # --- capture ---

    def _eager(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss = self.loss_fn(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def _state_tensors(self) -> list[torch.Tensor]:
        return [
            v
            for p in self.params
            for v in self.optimizer.state.get(p, {}).values()
            if torch.is_tensor(v)
        ]

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> _Captured:
        had_state = bool(self._state_tensors())
        with torch.no_grad():
            saved_params = [p.detach().clone() for p in self.params]
            saved_state = [t.clone() for t in self._state_tensors()]
        static_x = x.clone(memory_format=torch.preserve_format)
        static_y = y.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):  # also creates Adam's state if there was none
                self._eager(static_x, static_y)
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():  # undo the warm-up, in place
            torch._foreach_copy_(self.params, saved_params)
            state = self._state_tensors()
            if had_state:
                torch._foreach_copy_(state, saved_state)
            else:
                torch._foreach_zero_(state)  # step 0, zero moments: a fresh Adam
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the heartbeat thread may touch CUDA-unrelated code meanwhile
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = self.model(static_x)
            loss = self.loss_fn(out, static_y)
            loss.backward()
            self.optimizer.step()
        self.captures += 1
        # Detached views of the same memory: holding the captured autograd graph alive kept
        # its gradient-accumulation nodes alive too, and the next shape's warm-up on a side
        # stream then warned of a stream mismatch (seen on the H200).
        return _Captured(graph, static_x, static_y, out.detach(), loss.detach())
