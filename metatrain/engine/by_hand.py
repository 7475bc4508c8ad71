"""One inner step of the paper's conv nets on the CPU from autograd's own kernel calls, made by
hand: ``ManualBackward`` on the calling thread, ``ThreadedBackward`` on two threads.
Bit-identical to autograd either way (tested against ``torch.autograd.grad`` for the Omniglot
and Mini-ImageNet nets). Measurements: ``docs/engine.md``.

Why by hand at all: on batches this small, autograd's graph, engine and the modules' calls
cost more than the small head's kernels. ReLU runs in place and the trunk's operations go
through torch's own bindings (``torch.convolution``), a few microseconds cheaper per call than
``torch.ops.aten``'s boxed path; the same kernels. A head of ``Flatten`` and ``Linear`` under
a loss that declares a by-hand form (``Loss.has_linear_head``, defined beside the loss in
``metatrain.losses``) runs by hand too; any other head or loss under autograd.

Why two threads: under the paper's chained Adam a meta-batch's tasks are a strict sequence
(each task's steps need the moments the previous task left), so task workers cannot help and
only a faster single step can, and two intra-op threads barely help on batches of 10 images.
But a convolution's backward pass is two independent products: the gradient for its input,
which the next layer down waits for, and the gradients for its weights and bias, which
nothing in the step waits for. The helper thread takes the latter.

Two more uses of the helper's idle time (it waits through the calling thread's forward pass):

- ``update``: the optimizer's step taken inside the backward pass, all layers but the first
  on the helper as one job once their weights are no longer read, the first layer's here,
  and the next step waits for the helper only after its first block. (One job per layer
  was slower: each of Adam's ops is a hand-over of the interpreter lock.)
- ``later``: a whole step's gradients at other weights, computed on the helper a block at
  a time between its urgent jobs. A meta-batch's tasks all start from the meta-weights, so
  their first steps' gradients need nothing from the tasks before them, even with Adam's
  moments chained (``metatrain.engine.runners``).

How: the calling thread runs the convolutional trunk forward with the same aten operations
(and arguments) that autograd records for it, and the head as above. Backward, it carries
the gradient down through ReLU, max-pool and batch norm and each convolution's input
gradient, handing each convolution's weight and bias gradients to the helper as soon as their
output gradient is known. The first convolution has no input gradient to compute, so the
calling thread does its weights while the helper finishes. Every gradient comes from the very
kernel call autograd would make, hence the same bits.

The helper is a daemon thread on one torch thread, idle on a queue between steps; it stops
when its ``ThreadedBackward`` is closed or collected. Supported trunks: blocks of
``Conv2d`` (numeric padding, zeros padding mode, groups 1), ``BatchNorm2d`` (affine, batch
statistics, no running averages), an optional ``MaxPool2d``, ``ReLU``; anything may follow.
"""

from __future__ import annotations

import collections
import copy
import functools
import queue
import threading
import weakref
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..losses import Loss

__all__ = ["ManualBackward", "Pending", "ThreadedBackward", "Update"]

_aten = torch.ops.aten


# ``update(first, last, grads)``: the optimizer's step for ``params[first:last]``.
Update = Callable[[int, int, list[torch.Tensor]], None]


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
        padding = conv.padding
        if isinstance(padding, str):  # refused by _conv_ok
            raise ValueError(f"padding {padding!r} is not supported")
        conv_args = (_pair(conv.stride), _pair(padding), _pair(conv.dilation))
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


class Pending:
    """Gradients being computed on the helper in its spare time (``ThreadedBackward.later``).

    The helper advances it one block of the network at a time, whenever no weight gradients
    of a step in progress are waiting, so it never delays the calling thread's steps by more
    than one kernel."""

    def __init__(
        self,
        steps: Generator[None, None, tuple[torch.Tensor, torch.Tensor]],
        grads: list[torch.Tensor | None],
    ) -> None:
        self._steps = steps
        self._grads = grads
        self._value: tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]] | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._cancelled = False

    def _advance(self) -> bool:
        """Run the next block (on the helper); True when finished."""
        if self._cancelled:
            self._finish(error=RuntimeError("cancelled"))
            return True
        try:
            next(self._steps)
        except StopIteration as stop:
            out, loss = stop.value
            self._value = (out, loss, self._grads)  # type: ignore[assignment]
            self._done.set()
            return True
        except BaseException as error:  # noqa: BLE001 - re-raised by result()
            self._finish(error=error)
            return True
        return False

    def _finish(self, error: BaseException) -> None:
        self._error = error
        self._steps.close()
        self._done.set()

    def cancel(self) -> None:
        """Drop it: the helper stops working on it at its next block."""
        self._cancelled = True

    def result(self) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(output, loss, gradients in ``params`` order), waiting for them if need be."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


def _serve(jobs: queue.SimpleQueue, results: queue.SimpleQueue, ready: threading.Event) -> None:
    """The helper thread: run each job at once, hand back its result (or its exception); in
    between, advance the ``Pending`` gradients it was given, one block at a time."""
    # Its own OpenMP team size: a second thread per op would spin-wait beside the caller's.
    # Reading the count first makes torch settle this thread's setting now; otherwise its
    # first operation would reset it to whatever the process-wide count is by then.
    torch.get_num_threads()
    torch.set_num_threads(1)
    # Nothing on this thread is differentiated through (the head's autograd turns it back on).
    torch.set_grad_enabled(False)
    ready.set()
    spare: collections.deque[Pending] = collections.deque()
    try:
        while True:
            if spare:
                try:
                    job = jobs.get_nowait()
                except queue.Empty:
                    if spare[0]._advance():
                        spare.popleft()
                    continue
            else:
                job = jobs.get()
            if job is None:
                return
            if isinstance(job, Pending):
                spare.append(job)
                continue
            try:
                results.put(job())
            except BaseException as error:  # noqa: BLE001 - re-raised in the calling thread
                results.put(error)
    finally:
        for pending in spare:
            pending._finish(error=RuntimeError("ThreadedBackward is closed"))


def _stop(jobs: queue.SimpleQueue, thread: threading.Thread) -> None:
    jobs.put(None)
    if thread is not threading.current_thread():  # collected by a job's last reference
        thread.join()


class ManualBackward:
    """Loss, output and gradients of ``model`` on a batch, on the calling thread, from the
    kernel calls autograd would make (so its bits) without autograd's graph and engine.

    ``params``: the tensors to return gradients for, in this order (all of the model's
    parameters that require grad). ``loss``: differentiated by autograd together with the
    head, unless it declares a by-hand linear head (``Loss.has_linear_head``) and the head is
    a ``Flatten`` and a ``Linear`` (then by hand too, with ``loss.linear_head``).
    """

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """Whether ``model`` is a conv net this class computes (CPU, float32 weights, all of
        them trained: a frozen weight's gradient would be computed for nothing)."""
        return _supported_split(model) is not None

    def __init__(self, model: nn.Module, params: Sequence[torch.Tensor], loss: Loss) -> None:
        split = _supported_split(model)
        if split is None:
            raise ValueError(f"{type(self).__name__} supports CPU float32 conv nets only")
        self.blocks, self.head = split
        self.loss = loss
        self._params = list(params)
        slot = {id(p): i for i, p in enumerate(self._params)}
        self._count = len(self._params)
        trunk = {id(p) for b in self.blocks for m in (b.conv, b.norm) for p in m.parameters()}
        head_named = [(n, p) for n, p in self.head.named_parameters() if id(p) in slot]
        if len(head_named) + len(trunk) != self._count or not trunk <= slot.keys():
            raise ValueError("params must be the model's own parameters")
        # Where each weight sits in ``params`` (and so in the weights and gradient lists).
        self._head_slots = [(name, slot[id(p)]) for name, p in head_named]
        self._block_slots = [
            (
                slot[id(b.conv.weight)],
                slot[id(b.conv.bias)] if b.conv.bias is not None else None,
                slot[id(b.norm.weight)],
                slot[id(b.norm.bias)],
            )
            for b in self.blocks
        ]
        # (weight slot, bias slot) where the head and the loss run by hand (``loss.linear_head``).
        self._linear_head = _linear_head(self.head, slot) if loss.has_linear_head else None
        self._unsettled = False  # (ThreadedBackward) updates still running on the helper
        # (ThreadedBackward) the first block's params and all the others as two ranges of
        # ``params``, for ``update``; a copy of the head for ``later``'s jobs.
        self._ranges: tuple[tuple[int, int], tuple[int, int]] | None = None
        self._spare_head = self.head

    def settle(self) -> None:
        """Nothing runs beside the calling thread here."""

    def _hand_off(self, job: Callable[..., None], *args: object) -> None:
        """On one thread: run ``job(*args)`` now."""
        job(*args)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(output, loss, gradients in ``params`` order); output and loss are detached."""
        grads: list[torch.Tensor | None] = [None] * self._count
        with torch.no_grad():
            out, loss = _run(self._gradients(x, y, self._params, grads, False, None))
        return out, loss, grads  # type: ignore[return-value]

    def _gradients(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        weights: list[torch.Tensor],
        grads: list[torch.Tensor | None],
        hand_off: bool,
        update: Update | None,
    ) -> Generator[None, None, tuple[torch.Tensor, torch.Tensor]]:
        """Fills ``grads``, pausing after each block of the network; returns (output, loss),
        detached. Runs with autograd off. ``hand_off``: the helper takes the convolutions'
        weight gradients (else this thread computes them)."""
        saved = []
        h = x
        for block, (conv_w, conv_b, norm_w, norm_b) in zip(
            self.blocks, self._block_slots, strict=True
        ):
            bias = weights[conv_b] if conv_b is not None else None
            # torch's own bindings of the aten operations autograd records: the same kernels,
            # a few microseconds less per call than ``torch.ops.aten``'s boxed path.
            conv_out = torch.convolution(
                h, weights[conv_w], bias, *block.conv_args, False, [0, 0], 1
            )
            norm_out, mean, invstd = torch.native_batch_norm(
                conv_out, weights[norm_w], weights[norm_b], None, None, True, 0.0, block.norm.eps
            )
            pooled, indices = norm_out, None
            if block.pool_args is not None:
                pooled, indices = _aten.max_pool2d_with_indices(norm_out, *block.pool_args)
            # In place: nothing reads the batch norm's (or pool's) output before the ReLU
            # except the pool's backward, which reads ``norm_out``, never ReLU'd in place.
            relu_out = pooled.relu_()
            saved.append((h, conv_out, mean, invstd, norm_out, indices, relu_out))
            h = relu_out
            if self._unsettled and hand_off:
                self.settle()  # the previous step's updates of the later weights
            yield

        if self._linear_head is not None:
            weight_slot, bias_slot = self._linear_head
            out, loss, grad, grads[weight_slot], grads[bias_slot] = self.loss.linear_head(
                h, y, weights[weight_slot], weights[bias_slot]
            )
        else:
            out, loss, grad = self._autograd_head(h, y, weights, grads)
        if update is not None and self._ranges is not None and len(self.blocks) == 1:
            self._hand_off(update, *self._ranges[1], grads)  # the head's
        yield

        for index in range(len(self.blocks) - 1, -1, -1):
            block = self.blocks[index]
            conv_w, conv_b, norm_w, norm_b = self._block_slots[index]
            conv_in, conv_out, mean, invstd, norm_out, indices, relu_out = saved[index]
            grad = _aten.threshold_backward(grad, relu_out, 0)
            if block.pool_args is not None:
                grad = _aten.max_pool2d_with_indices_backward(
                    grad, norm_out, *block.pool_args, indices
                )
            grad, grads[norm_w], grads[norm_b] = _aten.native_batch_norm_backward(
                grad,
                conv_out,
                weights[norm_w],
                None,
                None,
                mean,
                invstd,
                True,
                block.norm.eps,
                [True, True, True],
            )
            weight = weights[conv_w]
            if index == 0 or not hand_off:
                # Nothing waits for the first input's gradient: this thread takes the weights.
                self._weight_grads(grads, grad, conv_in, block, weight, conv_w, conv_b)
            else:
                self._hand_off(
                    self._weight_grads, grads, grad, conv_in, block, weight, conv_w, conv_b
                )
            if index > 0:
                grad = _input_grad(grad, conv_in, block, weight)
            if update is not None and self._ranges is not None and index <= 1:
                # The weights of this block and those above are not read again in this step:
                # update them, after their gradients (the helper runs its jobs in order).
                if index == 0:
                    update(*self._ranges[0], grads)  # type: ignore[arg-type]  # all filled
                else:
                    self._hand_off(update, *self._ranges[1], grads)
            yield
        return out.detach(), loss.detach()

    def _autograd_head(
        self,
        h: torch.Tensor,
        y: torch.Tensor,
        weights: list[torch.Tensor],
        grads: list[torch.Tensor | None],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(output, loss, gradient for ``h``) of any head and loss, by autograd; the head's
        weight gradients into ``grads``. Other ``weights`` than the params come only from
        ``ThreadedBackward.later``, whose object holds the spare head."""
        features = h.detach().requires_grad_(True)
        head_weights = [weights[s] for _, s in self._head_slots]
        with torch.enable_grad():
            if weights is self._params:
                out = self.head(features)
            else:
                head_weights = [w.detach().requires_grad_(True) for w in head_weights]
                named = {
                    name: w for (name, _), w in zip(self._head_slots, head_weights, strict=True)
                }
                # On a copy: functional_call swaps the module's weights while it runs, and the
                # calling thread may be running the head itself meanwhile.
                out = torch.func.functional_call(self._spare_head, named, (features,))
            loss = self.loss(out, y)
            head_grads = torch.autograd.grad(loss, [features, *head_weights])
        for (_, s), g in zip(self._head_slots, head_grads[1:], strict=True):
            grads[s] = g
        return out, loss, head_grads[0]

    @staticmethod
    def _weight_grads(
        grads: list[torch.Tensor | None],
        grad: torch.Tensor,
        conv_in: torch.Tensor,
        block: _Block,
        weight: torch.Tensor,
        weight_slot: int,
        bias_slot: int | None,
    ) -> None:
        """The block's convolution weight and bias gradients into ``grads`` (either thread)."""
        _, weight_grad, bias_grad = _conv_backward(grad, conv_in, block, weight, False)
        grads[weight_slot] = weight_grad
        if bias_slot is not None:
            grads[bias_slot] = bias_grad


class ThreadedBackward(ManualBackward):
    """``ManualBackward`` on two threads: a helper thread takes each convolution's weight
    gradients, the optimizer's step (``update``) and whole steps at other weights (``later``).
    """

    def __init__(self, model: nn.Module, params: Sequence[torch.Tensor], loss: Loss) -> None:
        super().__init__(model, params, loss)
        self._spare_head = copy.deepcopy(self.head)  # for ``later``'s jobs, on the helper
        # For ``update``: the first block's params, and all the others, as two ranges of
        # ``params``; None where they are not (the model's own order has them so).
        first = {s for s in self._block_slots[0] if s is not None}
        head = _range(sorted(first))
        rest = _range([s for s in range(self._count) if s not in first])
        self._ranges = None if head is None or rest is None else (head, rest)
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

    @property
    def updates_in_place(self) -> bool:
        """Whether ``__call__`` takes an ``update`` (each block's weights side by side in
        ``params``, as the model's own order has them)."""
        return self._ranges is not None

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, update: Update | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(output, loss, gradients in ``params`` order); output and loss are detached.

        ``update``: also take the optimizer's step, in two ranges of ``params``, each as soon
        as its gradients are known and its weights no longer needed: all but the first
        block's on the helper (one job: each op a job makes the two threads contend for the
        interpreter lock), the first block's here. The call may return while the helper
        still updates: the next call waits for it after its first block (which needs none of
        those weights), and ``settle`` waits for it before anything else reads the weights
        (or the gradients returned, which the helper fills meanwhile).
        """
        if not self._thread.is_alive():
            raise RuntimeError("ThreadedBackward is closed")
        if update is not None and self._ranges is None:
            raise ValueError("update needs each block's params side by side")
        if not self._unsettled:
            self._collect()  # answers an interrupted step left behind (Ctrl-C in a notebook)
        grads: list[torch.Tensor | None] = [None] * self._count
        steps = self._gradients(x, y, self._params, grads, hand_off=True, update=update)
        finished = False
        try:
            with torch.no_grad():
                out, loss = _run(steps)
            finished = True
        finally:
            if not finished or update is None:
                self.settle()
        self._unsettled = update is not None
        return out, loss, grads  # type: ignore[return-value]

    def update(self, update: Update, grads: list[torch.Tensor]) -> None:
        """Apply ``update`` for gradients computed elsewhere (``later``) as ``__call__`` does:
        the first block's range here, the rest on the helper (see ``__call__``)."""
        if self._ranges is None:
            raise ValueError("update needs each block's params side by side")
        self.settle()
        update(*self._ranges[0], grads)
        self._hand_off(update, *self._ranges[1], grads)
        self._unsettled = True

    def settle(self) -> None:
        """Wait for everything handed to the helper by steps (not ``later``'s jobs) and raise
        the first error among them."""
        self._unsettled = False
        errors = self._collect()
        if errors:
            raise errors[0]

    def later(self, x: torch.Tensor, y: torch.Tensor, weights: Sequence[torch.Tensor]) -> Pending:
        """What ``__call__`` returns, for the network with ``weights`` (in ``params`` order)
        instead of its own, computed wholly on the helper while it would otherwise wait. The
        same kernels on one thread each, so the same bits, for ``weights`` laid out in memory
        as the params are (copies made with ``clone``: channels_last stays so). ``weights``
        and the batch must not change until the result is taken or the ``Pending``
        cancelled."""
        if not self._thread.is_alive():
            raise RuntimeError("ThreadedBackward is closed")
        grads: list[torch.Tensor | None] = [None] * self._count
        pending = Pending(
            self._gradients(x, y, list(weights), grads, hand_off=False, update=None), grads
        )
        self._jobs.put(pending)
        return pending

    def _hand_off(self, job: Callable[..., None], *args: object) -> None:
        """Run ``job(*args)`` on the helper, ahead of its spare-time work."""
        self._outstanding += 1
        self._jobs.put(functools.partial(job, *args))

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


def _linear_head(head: nn.Sequential, slot: dict[int, int]) -> tuple[int, int] | None:
    """(weight slot, bias slot) of a head that is ``Flatten()`` then ``Linear`` with a bias,
    both trained; else None."""
    modules = list(head.children())
    if len(modules) != 2:
        return None
    flatten, linear = modules
    if not (
        type(flatten) is nn.Flatten
        and (flatten.start_dim, flatten.end_dim) == (1, -1)
        and type(linear) is nn.Linear
        and linear.bias is not None
        and id(linear.weight) in slot
        and id(linear.bias) in slot
    ):
        return None
    return slot[id(linear.weight)], slot[id(linear.bias)]


def _run(
    steps: Generator[None, None, tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``_gradients``'s blocks one after another, here; its (output, loss)."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            value: tuple[torch.Tensor, torch.Tensor] = stop.value
            return value


def _range(slots: list[int]) -> tuple[int, int] | None:
    """(first, last + 1) where the sorted ``slots`` are consecutive, else None."""
    if not slots or slots != list(range(slots[0], slots[-1] + 1)):
        return None
    return slots[0], slots[-1] + 1


def _conv_backward(
    grad: torch.Tensor,
    conv_in: torch.Tensor,
    block: _Block,
    weight: torch.Tensor,
    input_grad: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(input, weight, bias) gradients of the block's convolution (whose weight is
    ``weight``): the input's alone, or the weight's and bias's."""
    conv = block.conv
    has_bias = conv.bias is not None
    grads: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]
    grads = _aten.convolution_backward(
        grad,
        conv_in,
        weight,
        [conv.out_channels] if has_bias else None,
        *block.conv_args,
        False,
        [0, 0],
        1,
        [input_grad, not input_grad, has_bias and not input_grad],
    )
    return grads


def _input_grad(
    grad: torch.Tensor, conv_in: torch.Tensor, block: _Block, weight: torch.Tensor
) -> torch.Tensor:
    """The gradient for the block's convolution input."""
    input_grad = _conv_backward(grad, conv_in, block, weight, True)[0]
    assert input_grad is not None
    return input_grad
