"""Inner steps by hand (metatrain.engine.by_hand), on one thread and two: autograd's numbers,
clean failures."""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
import threading
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metatrain import preset
from metatrain.engine.by_hand import ManualBackward, ThreadedBackward
from metatrain.losses import SUMMED_CROSS_ENTROPY, Loss
from metatrain.models import build_model
from tests.metatrain.synthetic import tiny_config

# The learner's own loss: it declares a by-hand form, so a Flatten-Linear head runs without
# autograd.
summed_cross_entropy = SUMMED_CROSS_ENTROPY
_summed_cross_entropy = summed_cross_entropy


class _NoHandHead(Loss):
    """The same numbers, declaring no by-hand form: the head runs under autograd."""

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y, reduction="sum")


_any_other_loss = _NoHandHead()


def _net_and_batch(name: str, batch: int, channels_last: bool, seed: int = 0):
    config = tiny_config() if name == "tiny" else preset(name)
    model = build_model(config, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(batch, config.in_channels, config.image_size, config.image_size, generator=g)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, config.ways, (batch,), generator=g)
    return model, x, y


def _assert_autograds(grads, model, x, y, params=None) -> None:
    """``grads`` are autograd's gradients of the summed loss for ``params`` (default: all)."""
    params = list(model.parameters()) if params is None else params
    expected = torch.autograd.grad(_summed_cross_entropy(model(x), y), params)
    assert all(torch.equal(g, e) for g, e in zip(grads, expected, strict=True))


@pytest.fixture
def threaded():
    made: list[ThreadedBackward] = []

    def make(model: nn.Module) -> ThreadedBackward:
        made.append(ThreadedBackward(model, list(model.parameters()), _summed_cross_entropy))
        return made[-1]

    yield make
    for t in made:
        t.close()


@pytest.mark.parametrize(
    ("name", "batch", "channels_last"),
    [
        ("omniglot-5way-1shot", 10, True),
        ("omniglot-5way-1shot", 10, False),
        ("omniglot-20way-1shot", 20, True),
        ("miniimagenet-5way-1shot", 4, True),  # max-pool between batch norm and ReLU
        ("tiny", 6, True),
    ],
)
def test_loss_output_and_every_gradient_are_autograds_to_the_bit(
    threaded, name, batch, channels_last
):
    model, x, y = _net_and_batch(name, batch, channels_last)
    params = list(model.parameters())
    expected_out = model(x)
    expected_loss = _summed_cross_entropy(expected_out, y)
    expected = torch.autograd.grad(expected_loss, params)

    step = threaded(model)
    for _ in range(2):  # the helper's second round uses the same queues
        out, loss, grads = step(x, y)
        assert torch.equal(out, expected_out.detach()) and torch.equal(loss, expected_loss)
        assert not out.requires_grad and not loss.requires_grad
        assert len(grads) == len(params)
        for g, e, p in zip(grads, expected, params, strict=True):
            assert g.shape == p.shape and g.stride() == e.stride()
            assert torch.equal(g, e)


@pytest.mark.parametrize("name", ["omniglot-5way-1shot", "miniimagenet-5way-1shot", "tiny"])
@pytest.mark.parametrize("loss", [summed_cross_entropy, _any_other_loss], ids=["hand", "autograd"])
def test_one_thread_gives_autograds_bits_with_either_head(name, loss):
    model, x, y = _net_and_batch(name, 6, True)
    step = ManualBackward(model, list(model.parameters()), loss)
    assert (step._linear_head is not None) == loss.has_linear_head
    for _ in range(2):
        out, value, grads = step(x, y)
        assert torch.equal(out, model(x).detach()) and not out.requires_grad
        assert torch.equal(value, _summed_cross_entropy(model(x), y))
        for g, e in zip(grads, _autograd_grads(model, x, y), strict=True):
            assert g.stride() == e.stride() and torch.equal(g, e)
    assert not hasattr(step, "_thread")  # no helper thread


@pytest.mark.parametrize("name", ["omniglot-5way-1shot", "miniimagenet-5way-1shot", "tiny"])
@pytest.mark.parametrize("loss", [summed_cross_entropy, _any_other_loss], ids=["hand", "autograd"])
def test_both_heads_give_autograds_bits_now_and_later(name, loss):
    model, x, y = _net_and_batch(name, 6, True)
    step = ThreadedBackward(model, list(model.parameters()), loss)
    try:
        assert (step._linear_head is not None) == loss.has_linear_head
        out, value, grads = step(x, y)
        assert torch.equal(out, model(x).detach())
        assert torch.equal(value, _summed_cross_entropy(model(x), y))
        _assert_autograds(grads, model, x, y)
        # ``later``: the same at other weights, on the helper.
        weights = _other_weights(model, seed=3)
        out_later, value_later, grads_later = step.later(x, y, weights).result()
        other = copy.deepcopy(model)
        with torch.no_grad():
            for p, w in zip(other.parameters(), weights, strict=True):
                p.copy_(w)
        assert torch.equal(out_later, other(x).detach())
        assert torch.equal(value_later, _summed_cross_entropy(other(x), y))
        for g, e in zip(grads_later, _autograd_grads(other, x, y), strict=True):
            assert g.stride() == e.stride() and torch.equal(g, e)
    finally:
        step.close()


def _autograd_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    return torch.autograd.grad(_summed_cross_entropy(model(x), y), list(model.parameters()))


@pytest.mark.parametrize(
    ("head", "by_hand"),
    [
        ([nn.Flatten(), nn.Linear(4 * 6 * 6, 3)], True),
        ([nn.Flatten(), nn.Linear(4 * 6 * 6, 3, bias=False)], False),
        ([nn.Flatten(), nn.Linear(4 * 6 * 6, 3), nn.Identity()], False),
        ([nn.Flatten(start_dim=0), nn.Linear(6 * 4 * 6 * 6, 3)], False),
    ],
    ids=["flatten-linear", "no-bias", "more-layers", "other-flatten"],
)
def test_only_a_flatten_linear_head_runs_by_hand(head, by_hand):
    trunk = _conv_block()[:3]
    model = nn.Sequential(*trunk, *head)
    step = ThreadedBackward(model, list(model.parameters()), summed_cross_entropy)
    try:
        assert (step._linear_head is not None) == by_hand
    finally:
        step.close()


def test_the_gradients_follow_the_order_of_the_params_given(threaded):
    model, x, y = _net_and_batch("tiny", 6, True)
    params = list(model.parameters())[::-1]
    step = ThreadedBackward(model, params, _summed_cross_entropy)
    try:
        _, _, grads = step(x, y)
    finally:
        step.close()
    _assert_autograds(grads, model, x, y, params)


def _conv_block(**conv) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 4, 3, **conv),
            norm1=nn.BatchNorm2d(4, track_running_stats=False),
            relu1=nn.ReLU(),
            flatten=nn.Flatten(),
            fc=nn.Linear(4 * 6 * 6, 3),
        )
    )


@pytest.mark.parametrize(
    "model",
    [
        build_model(preset("sine")),  # an MLP: nothing to overlap
        nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten()
        ),  # running stats
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten()),  # no batch norm
        _conv_block(padding="same"),  # padding by name, another aten operation
        nn.Sequential(
            nn.Conv2d(2, 4, 3, groups=2), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU()
        ),  # grouped, and nothing after the trunk
        _conv_block().double(),
        _conv_block().requires_grad_(False),
    ],
    ids=["mlp", "running-stats", "no-norm", "padding-same", "grouped-no-head", "float64", "frozen"],
)
def test_only_cpu_float32_conv_nets_with_batch_statistics_are_supported(model):
    assert not ThreadedBackward.supports(model)
    with pytest.raises(ValueError, match="conv nets"):
        ThreadedBackward(model, list(model.parameters()), _summed_cross_entropy)


def test_a_one_block_trunk_is_supported_and_exact(threaded):
    model = _conv_block()
    x, y = torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    assert ThreadedBackward.supports(model)
    _, _, grads = threaded(model)(x, y)
    _assert_autograds(grads, model, x, y)


def test_foreign_params_are_refused():
    model = _conv_block()
    with pytest.raises(ValueError, match="own parameters"):
        ThreadedBackward(model, [nn.Parameter(torch.zeros(3))], _summed_cross_entropy)


def test_a_failure_on_either_thread_is_raised_and_the_next_step_works(threaded, monkeypatch):
    from metatrain.engine import by_hand as threaded_backward

    model, x, y = _net_and_batch("tiny", 6, True)
    step = threaded(model)
    real = threaded_backward._conv_backward
    calls: list[str] = []

    def failing_on_the_helper(grad, conv_in, block, weight, input_grad):
        calls.append(threading.current_thread().name)
        if threading.current_thread().name == "metatrain-backward":
            raise RuntimeError("weight gradient failed")
        return real(grad, conv_in, block, weight, input_grad)

    monkeypatch.setattr(threaded_backward, "_conv_backward", failing_on_the_helper)
    with pytest.raises(RuntimeError, match="weight gradient failed"):
        step(x, y)
    assert "metatrain-backward" in calls  # the helper did take its share

    monkeypatch.setattr(threaded_backward, "_conv_backward", real)
    _, _, grads = step(x, y)  # no stale answer of the failed step is left in the queue
    _assert_autograds(grads, model, x, y)


def _threads_of_a_new_thread() -> int:
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def test_the_helper_computes_on_one_torch_thread_and_leaves_the_others_theirs(threaded):
    # A second OpenMP thread per op would spin-wait beside the calling thread's work.
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        step = threaded(_conv_block())
        assert torch.get_num_threads() == 2  # the caller's own count is its own
        assert _threads_of_a_new_thread() == 2  # and so is the process-wide default
        # A process-wide change made before the helper's first op must not become its count
        # (torch settles a thread's setting lazily, at its first op).
        torch.set_num_threads(2)
        step._jobs.put(torch.get_num_threads)
        assert step._results.get(timeout=10) == 1
    finally:
        torch.set_num_threads(before)


def test_close_stops_the_helper_and_later_steps_are_refused():
    model, x, y = _net_and_batch("tiny", 6, True)
    step = ThreadedBackward(model, list(model.parameters()), _summed_cross_entropy)
    step.close()
    step.close()  # idempotent
    assert not step._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        step(x, y)


def test_a_process_that_never_closes_it_exits_cleanly():
    # A helper still running while the interpreter shut down aborted the process
    # ("terminate called without an active exception", exit code 134).
    code = (
        "import torch\n"
        "from metatrain import preset\n"
        "from metatrain.engine.learner import Learner\n"
        "from metatrain.models import build_model\n"
        "config = preset('omniglot-5way-1shot')\n"
        "learner = Learner.from_config(build_model(config), config, helper_thread=True)\n"
        "assert learner.step_kind == 'helper_thread'\n"
        "x, y = torch.rand(10, 1, 28, 28), torch.randint(0, 5, (10,))\n"
        "for _ in range(3):\n"
        "    learner.step(x, y)\n"
        "print('stepped')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stepped"


def test_a_step_interrupted_while_waiting_leaves_the_next_step_exact(threaded):
    # Ctrl-C in a notebook lands in the calling thread, possibly while it waits for the
    # helper: the unanswered jobs must not be taken for the next step's.
    model, x, y = _net_and_batch("tiny", 6, True)
    step = threaded(model)
    real = step._results

    class InterruptedOnce:
        def __init__(self):
            self.interrupted = False

        def get(self):
            if not self.interrupted:
                self.interrupted = True
                raise KeyboardInterrupt
            return real.get()

    step._results = InterruptedOnce()
    with pytest.raises(KeyboardInterrupt):
        step(x, y)
    x2 = torch.rand_like(x)
    _, _, grads = step(x2, y)
    _assert_autograds(grads, model, x2, y)


# --- gradients computed in the helper's spare time (``later``) ----------------------------


def _other_weights(model: nn.Module, seed: int) -> list[torch.Tensor]:
    """The model's weights, each nudged: a point other than the one the model holds, laid out
    in memory as the model's (channels_last), as the algorithms' copies are."""
    g = torch.Generator().manual_seed(seed)
    weights = [p.detach().clone() for p in model.parameters()]
    for w in weights:
        w.add_(0.01 * torch.randn(w.shape, generator=g))
    return weights


def _load(model: nn.Module, weights: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, w in zip(model.parameters(), weights, strict=True):
            p.copy_(w)


@pytest.mark.parametrize(
    ("name", "batch"), [("omniglot-5way-1shot", 10), ("miniimagenet-5way-1shot", 4)]
)
def test_later_gives_autograds_numbers_at_the_weights_given_while_steps_go_on(
    threaded, name, batch
):
    model, x, y = _net_and_batch(name, batch, True)
    twin, _, _ = _net_and_batch(name, batch, True)
    weights = _other_weights(model, seed=3)
    step = threaded(model)
    pending = step.later(x, y, weights)
    x2 = torch.rand_like(x)
    for _ in range(3):  # the helper's own jobs go first; the spare-time job is fitted around
        _, _, grads = step(x2, y)
        _assert_autograds(grads, model, x2, y)
    out, loss, grads = pending.result()
    _load(twin, weights)
    expected_out = twin(x)
    assert torch.equal(out, expected_out.detach())
    assert torch.equal(loss, _summed_cross_entropy(expected_out, y).detach())
    _assert_autograds(grads, twin, x, y)
    assert not out.requires_grad and not any(g.requires_grad for g in grads)


def test_a_cancelled_later_job_is_dropped_and_its_result_says_so(threaded):
    model, x, y = _net_and_batch("tiny", 6, True)
    step = threaded(model)
    gate = threading.Event()
    step._jobs.put(gate.wait)  # keeps the helper busy until the job is cancelled
    step._outstanding += 1
    pending = step.later(x, y, _other_weights(model, seed=1))
    pending.cancel()
    gate.set()
    step.settle()
    with pytest.raises(RuntimeError, match="cancelled"):
        pending.result()
    _, _, grads = step(x, y)  # the helper goes on
    _assert_autograds(grads, model, x, y)


def test_a_failing_later_job_raises_from_its_result_only(threaded):
    model, x, y = _net_and_batch("tiny", 6, True)
    step = threaded(model)
    pending = step.later(x, torch.full_like(y, 99), _other_weights(model, seed=1))  # bad labels
    with pytest.raises((IndexError, RuntimeError), match="out of bounds|Target"):
        pending.result()
    _, _, grads = step(x, y)
    _assert_autograds(grads, model, x, y)


def test_closing_answers_later_jobs_still_waiting():
    model, x, y = _net_and_batch("tiny", 6, True)
    step = ThreadedBackward(model, list(model.parameters()), _summed_cross_entropy)
    gate = threading.Event()
    step._jobs.put(gate.wait)
    pending = step.later(x, y, _other_weights(model, seed=1))
    step._jobs.put(None)  # what close() sends, queued behind the jobs
    gate.set()
    with pytest.raises(RuntimeError, match="closed"):
        pending.result()
    step.close()
    with pytest.raises(RuntimeError, match="closed"):
        step.later(x, y, list(model.parameters()))


# --- the optimizer's step taken inside the backward pass (``update``) -------------------


def _flat_adam(model: nn.Module):
    from metatrain.engine.flat_adam import FlatAdam

    return FlatAdam(torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.0, 0.999), eps=1e-8))


def _updating(adam):
    """An ``update`` for one step of ``adam``, as the learner makes it."""
    scalars = adam.begin_step()
    assert scalars is not None
    return functools.partial(adam.apply, scalars)


@pytest.mark.parametrize(
    ("name", "batch"),
    [("omniglot-5way-1shot", 10), ("miniimagenet-5way-1shot", 4), ("tiny", 6)],
)
def test_steps_that_update_in_place_are_adams_steps_to_the_bit(threaded, name, batch):
    model, x, y = _net_and_batch(name, batch, True)
    twin, _, _ = _net_and_batch(name, batch, True)
    adam, twin_adam = _flat_adam(model), _flat_adam(twin)
    step = threaded(model)
    assert step.updates_in_place
    g = torch.Generator().manual_seed(7)
    batches = [torch.rand(x.shape, generator=g).contiguous(memory_format=torch.channels_last)]
    batches += [batches[0] * 0.5, batches[0] ** 2]
    later = step.later(batches[2], y, [p.detach().clone() for p in model.parameters()])
    for xb in batches[:2]:
        out, loss, _ = step(xb, y, _updating(adam))  # unsettled in between, as in a task
        expected = twin(xb)
        assert torch.equal(out, expected.detach())
        twin_adam.step(
            torch.autograd.grad(_summed_cross_entropy(expected, y), list(twin.parameters()))
        )
    step.settle()
    assert all(
        torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters(), strict=True)
    )
    # Gradients computed elsewhere (here at the weights before those two steps) go the same way.
    _, _, grads = later.result()
    step.update(_updating(adam), grads)
    twin_adam.step(grads)
    step.settle()
    assert all(
        torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters(), strict=True)
    )


def test_an_update_failing_on_the_helper_is_raised_by_the_next_step_or_settle(threaded):
    model, x, y = _net_and_batch("tiny", 6, True)
    step = threaded(model)
    calls: list[tuple[int, int]] = []

    def update(first, last, grads):
        calls.append((first, last))
        if threading.current_thread().name == "metatrain-backward":
            raise RuntimeError("update failed")

    step(x, y, update)  # may return before the helper's part has run
    with pytest.raises(RuntimeError, match="update failed"):
        step.settle()
    assert sorted(calls) == [(0, 4), (4, len(list(model.parameters())))]
    step(x, y, update)
    with pytest.raises(RuntimeError, match="update failed"):
        step(x, y)  # waits for the previous step's update after its first block
    step.settle()  # nothing left over
    _, _, grads = step(x, y)
    _assert_autograds(grads, model, x, y)


def test_params_not_side_by_side_cannot_be_updated_in_place():
    model, x, y = _net_and_batch("tiny", 6, True)
    params = list(model.parameters())
    shuffled = ThreadedBackward(model, params[1:] + params[:1], _summed_cross_entropy)
    try:
        assert not shuffled.updates_in_place
        with pytest.raises(ValueError, match="side by side"):
            shuffled(x, y, lambda first, last, grads: None)
        _, _, grads = shuffled(x, y)
        _assert_autograds(grads, model, x, y, params[1:] + params[:1])
    finally:
        shuffled.close()
