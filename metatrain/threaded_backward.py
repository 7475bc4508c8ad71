"""One inner step of the paper's conv nets on two CPU threads, bit-identical to autograd.

Why: under the paper's chained Adam a meta-batch's tasks are a strict sequence (each task's
steps need the moments the previous task left), so task workers cannot help and only a faster
single step can. Two intra-op threads barely help on batches of 10 images. But a convolution's
backward pass is two independent products: the gradient for its input, which the next layer
down waits for, and the gradients for its weights and bias, which nothing in the step waits
for. Measured on one Omniglot inner step (batch 10, one torch thread per thread, 2-core EPYC
VM): autograd's forward and backward 1.61-1.70 ms; the same on two intra-op threads 1.33 ms;
here, with the weight gradients on a helper thread, 1.16-1.35 ms (the head under autograd and
the hand-offs cost the upper end). Measured and not done: the helper also applying Adam to
the later layers (no gain: both threads are busy through the backward, and their small ops
then wait on each other for the interpreter lock); TorchScript ``fork`` instead of a Python
thread (1.32 vs 1.33 ms).

How: the calling thread runs the convolutional trunk forward with the same aten operations
(and arguments) that autograd records for it, and the network's head (``Flatten``, ``Linear``,
the loss) under autograd. Backward, it carries the gradient down through ReLU, max-pool and
batch norm and each convolution's input gradient, handing each convolution's weight and bias
gradients to the helper as soon as their output gradient is known. The first convolution has
no input gradient to compute, so the calling thread does its weights while the helper finishes.
Every gradient comes from the very kernel call autograd would make, hence the same bits
(tested against ``torch.autograd.grad`` for the Omniglot and Mini-ImageNet nets).

The helper is a daemon thread on one torch thread, idle on a queue between steps; it stops
when its ``ThreadedBackward`` is closed or collected. Supported trunks: blocks of
``Conv2d`` (numeric padding, zeros padding mode, groups 1), ``BatchNorm2d`` (affine, batch
statistics, no running averages), an optional ``MaxPool2d``, ``ReLU``; anything may follow.
"""

from __future__ import annotations

import functools
import queue
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ThreadedBackward"]

_aten = torch.ops.aten

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _Block:
    """One conv, batch norm, [max-pool,] ReLU block, with the aten arguments of its
    convolution (stride, padding, dilation) and max-pool (None: no pool) worked out once,
    not at every step."""

    conv: nn.Conv2d
    norm: nn.BatchNorm2d
    conv_args: tuple[list[int], list[int], list[int]]
    pool_args: tuple[list[int], list[int], list[int], list[int], bool] | None

    @classmethod
    def of(cls, conv: nn.Conv2d, norm: nn.BatchNorm2d, pool: nn.MaxPool2d | None) -> _Block:
        conv_args = (_pair(conv.stride), _pair(conv.padding), _pair(conv.dilation))
        pool_args = None
        if pool is not None:
            stride = pool.stride if pool.stride is not None else pool.kernel_size
            pool_args = (
                _pair(pool.kernel_size),
                _pair(stride),
                _pair(pool.padding),
                _pair(pool.dilation),
                bool(pool.ceil_mode),
            )
        return cls(conv, norm, conv_args, pool_args)


def _pair(value: int | Sequence[int]) -> list[int]:
    return [int(value), int(value)] if isinstance(value, int) else [int(v) for v in value]


def _conv_ok(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def _norm_ok(norm: nn.Module) -> bool:
    return (
        type(norm) is nn.BatchNorm2d
        and norm.affine
        and not norm.track_running_stats
        and norm.running_mean is None
    )


def _pool_ok(pool: nn.Module) -> bool:
    return type(pool) is nn.MaxPool2d and not pool.return_indices


def _split(model: nn.Module) -> tuple[list[_Block], nn.Sequential] | None:
    """The trunk's blocks and the head after them, or None if ``model`` is not such a net."""
    if type(model) is not nn.Sequential:
        return None
    modules = list(model.children())
    blocks: list[_Block] = []
    i = 0
    while i < len(modules) and isinstance(modules[i], nn.Conv2d):
        conv, norm = modules[i], modules[i + 1] if i + 1 < len(modules) else None
        if not (_conv_ok(conv) and norm is not None and _norm_ok(norm)):
            return None
        i += 2
        pool = None
        if i < len(modules) and isinstance(modules[i], nn.MaxPool2d):
            if not _pool_ok(modules[i]):
                return None
            pool = modules[i]
            i += 1
        if i >= len(modules) or type(modules[i]) is not nn.ReLU:
            return None
        i += 1
        blocks.append(_Block.of(conv, norm, pool))  # type: ignore[arg-type]
    if not blocks or i == len(modules):
        return None
    return blocks, nn.Sequential(*modules[i:])


def _supported_split(model: nn.Module) -> tuple[list[_Block], nn.Sequential] | None:
    """``_split(model)`` where its weights are ones this module computes, else None."""
    params = list(model.parameters())
    if not params or not all(
        p.device.type == "cpu" and p.dtype == torch.float32 and p.requires_grad for p in params
    ):
        return None
    return _split(model)


def _serve(jobs: queue.SimpleQueue, results: queue.SimpleQueue, ready: threading.Event) -> None:
    """The helper thread: run each job, hand back its result (or its exception)."""
    # Its own OpenMP team size: a second thread per op would spin-wait beside the caller's.
    # Reading the count first makes torch settle this thread's setting now; otherwise its
    # first operation would reset it to whatever the process-wide count is by then.
    torch.get_num_threads()
    torch.set_num_threads(1)
    ready.set()
    while True:
        job = jobs.get()
        if job is None:
            return
        try:
            results.put(job())
        except BaseException as error:  # noqa: BLE001 - re-raised in the calling thread
            results.put(error)


def _stop(jobs: queue.SimpleQueue, thread: threading.Thread) -> None:
    jobs.put(None)
    if thread is not threading.current_thread():  # collected by a job's last reference
        thread.join()


class ThreadedBackward:
    """Loss, output and gradients of ``model`` on a batch, computed on two threads.

    ``params``: the tensors to return gradients for, in this order (all of the model's
    parameters that require grad). ``loss``: ``loss(output, target)``, differentiated by
    autograd together with the head.
    """

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """Whether ``model`` is a conv net this class computes (CPU, float32 weights, all of
        them trained: a frozen weight's gradient would be computed for nothing)."""
        return _supported_split(model) is not None

    def __init__(self, model: nn.Module, params: Sequence[torch.Tensor], loss: Loss) -> None:
        split = _supported_split(model)
        if split is None:
            raise ValueError("ThreadedBackward supports CPU float32 conv nets only")
        self.blocks, self.head = split
        self.loss = loss
        self._slot = {id(p): i for i, p in enumerate(params)}
        self._count = len(params)
        trunk = {id(p) for b in self.blocks for m in (b.conv, b.norm) for p in m.parameters()}
        self._head_params = [p for p in params if id(p) not in trunk]
        if len(self._head_params) + len(trunk) != len(params):
            raise ValueError("params must be the model's own parameters")
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._outstanding = 0  # jobs handed to the helper and not yet answered
        ready = threading.Event()
        self._thread = threading.Thread(
            target=_serve,
            args=(self._jobs, self._results, ready),
            name="metatrain-backward",
            daemon=True,
        )
        threads = torch.get_num_threads()
        self._thread.start()
        ready.wait()  # its set_num_threads must not overlap this thread's kernels
        # set_num_threads also sets the count that threads started later begin with: put back
        # this thread's own (which the helper's call left as it was).
        torch.set_num_threads(threads)
        # Not a method of self's: a collected ThreadedBackward stops its thread, and one still
        # alive at exit stops it before the interpreter goes (a thread that outlives it, in
        # torch's thread-local teardown, aborted the process).
        self._finalizer = weakref.finalize(self, _stop, self._jobs, self._thread)

    def close(self) -> None:
        """Stop the helper thread (idempotent)."""
        self._finalizer()

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(output, loss, gradients in ``params`` order); output and loss are detached."""
        if not self._thread.is_alive():
            raise RuntimeError("ThreadedBackward is closed")
        self._collect()  # answers an interrupted step left behind (Ctrl-C in a notebook)
        grads: list[torch.Tensor | None] = [None] * self._count
        saved = []
        h = x
        with torch.no_grad():
            for block in self.blocks:
                conv, norm = block.conv, block.norm
                conv_out = _aten.convolution(
                    h, conv.weight, conv.bias, *block.conv_args, False, [0, 0], 1
                )
                norm_out, mean, invstd = _aten.native_batch_norm(
                    conv_out, norm.weight, norm.bias, None, None, True, 0.0, norm.eps
                )
                pooled, indices = norm_out, None
                if block.pool_args is not None:
                    pooled, indices = _aten.max_pool2d_with_indices(norm_out, *block.pool_args)
                relu_out = _aten.relu(pooled)
                saved.append((h, conv_out, mean, invstd, norm_out, indices, relu_out))
                h = relu_out

        features = h.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self.head(features)
            loss = self.loss(out, y)
            head_grads = torch.autograd.grad(loss, [features, *self._head_params])
        grad = head_grads[0]
        for p, g in zip(self._head_params, head_grads[1:], strict=True):
            grads[self._slot[id(p)]] = g

        try:
            with torch.no_grad():
                for index in range(len(self.blocks) - 1, -1, -1):
                    block = self.blocks[index]
                    conv_in, conv_out, mean, invstd, norm_out, indices, relu_out = saved[index]
                    grad = _aten.threshold_backward(grad, relu_out, 0)
                    if block.pool_args is not None:
                        grad = _aten.max_pool2d_with_indices_backward(
                            grad, norm_out, *block.pool_args, indices
                        )
                    grad, norm_w, norm_b = _aten.native_batch_norm_backward(
                        grad,
                        conv_out,
                        block.norm.weight,
                        None,
                        None,
                        mean,
                        invstd,
                        True,
                        block.norm.eps,
                        [True, True, True],
                    )
                    grads[self._slot[id(block.norm.weight)]] = norm_w
                    grads[self._slot[id(block.norm.bias)]] = norm_b
                    if index == 0:
                        # Nothing waits for this input's gradient: this thread takes the weights.
                        self._weight_grads(grads, grad, conv_in, block)
                        break
                    self._outstanding += 1
                    self._jobs.put(
                        functools.partial(self._weight_grads, grads, grad, conv_in, block)
                    )
                    grad = _conv_backward(grad, conv_in, block, True)[0]
        finally:
            errors = self._collect()
            if errors:
                raise errors[0]
        assert all(g is not None for g in grads)
        return out.detach(), loss.detach(), grads  # type: ignore[return-value]

    def _collect(self) -> list[BaseException]:
        """Wait for every job handed out; the errors they raised. The count is kept on the
        object, so a wait cut short by an exception is finished by the next call."""
        errors = []
        while self._outstanding:
            result = self._results.get()
            self._outstanding -= 1
            if isinstance(result, BaseException):
                errors.append(result)
        return errors

    def _weight_grads(
        self,
        grads: list[torch.Tensor | None],
        grad: torch.Tensor,
        conv_in: torch.Tensor,
        block: _Block,
    ) -> None:
        """The block's convolution weight and bias gradients into ``grads`` (either thread)."""
        conv = block.conv
        _, weight_grad, bias_grad = _conv_backward(grad, conv_in, block, False)
        grads[self._slot[id(conv.weight)]] = weight_grad
        if conv.bias is not None:
            grads[self._slot[id(conv.bias)]] = bias_grad


def _conv_backward(
    grad: torch.Tensor, conv_in: torch.Tensor, block: _Block, input_grad: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(input, weight, bias) gradients of the block's convolution: the input's alone, or
    the weight's and bias's."""
    conv = block.conv
    has_bias = conv.bias is not None
    return _aten.convolution_backward(
        grad,
        conv_in,
        conv.weight,
        [conv.out_channels] if has_bias else None,
        *block.conv_args,
        False,
        [0, 0],
        1,
        [input_grad, not input_grad, has_bias and not input_grad],
    )
