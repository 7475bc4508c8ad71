"""Flat Adam must be torch.optim.Adam, bit for bit, and keep torch's state usable."""

from __future__ import annotations

import copy
import importlib
import json
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metatrain import Compute
from metatrain.config import preset
from metatrain.engine.flat_adam import FlatAdam
from metatrain.engine.learner import Learner
from metatrain.models import build_model


def conv_net() -> nn.Module:
    """The Omniglot network, channels_last, as training runs it on the CPU."""
    model = build_model(preset("omniglot-5way-1shot"), generator=torch.Generator().manual_seed(0))
    return model.to(memory_format=torch.channels_last)


def odd_net() -> nn.Module:
    """Tensor sizes that leave CPU vector loops a remainder (37, 7*37, 3)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(7, 37), nn.Tanh(), nn.Linear(37, 3))


def batches(model: nn.Module, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    if isinstance(model[0], nn.Conv2d):
        x = torch.randn(n, 10, 1, 28, 28, generator=gen)
        x = [xi.contiguous(memory_format=torch.channels_last) for xi in x]
        return [(xi, torch.randint(0, 5, (10,), generator=gen)) for xi in x]
    return [
        (torch.randn(9, 7, generator=gen), torch.randint(0, 3, (9,), generator=gen))
        for _ in range(n)
    ]


def adam(model: nn.Module, **options) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.0, 0.999), eps=1e-8, **options)


def grads_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    loss = F.cross_entropy(model(x), y, reduction="sum")
    return torch.autograd.grad(loss, list(model.parameters()))


def torch_step(model: nn.Module, optimizer: torch.optim.Adam, x, y) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y, reduction="sum").backward()
    optimizer.step()


def assert_same(a: nn.Module, b: nn.Module) -> None:
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def assert_goes_on_like_a_fresh_adam(flat: FlatAdam, model, twin, data) -> None:
    """``flat`` stepping ``model`` computes what a new torch Adam computes stepping ``twin``."""
    fresh = adam(twin)
    for x, y in data:
        flat.step(grads_of(model, x, y))
        torch_step(twin, fresh, x, y)
    assert_same(model, twin)


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("make", [conv_net, odd_net], ids=["omniglot-conv", "odd-sizes"])
@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "for-loop"])
def test_flat_adam_computes_torch_adams_weights_bit_for_bit(make, foreach, threads):
    reference, flat_model = make(), make()
    reference_opt = adam(reference, foreach=foreach)
    flat = FlatAdam(adam(flat_model))
    for x, y in batches(reference, 12):
        torch_step(reference, reference_opt, x, y)
        flat.step(grads_of(flat_model, x, y))
    assert_same(reference, flat_model)
    state, flat_state = reference_opt.state_dict()["state"], flat.optimizer.state_dict()["state"]
    for i, s in state.items():
        for key, value in s.items():
            assert torch.equal(value, flat_state[i][key]), (i, key)
    assert float(flat_state[0]["step"]) == 12.0


def test_the_flat_state_continues_in_torchs_adam_and_back():
    model, twin = odd_net(), odd_net()
    flat = FlatAdam(adam(model))
    twin_opt = adam(twin)
    data = batches(model, 9)
    for x, y in data[:3]:
        flat.step(grads_of(model, x, y))
        torch_step(twin, twin_opt, x, y)
    # flat -> torch: a torch Adam loaded with the flat optimizer's state_dict goes on identically
    moved = odd_net()
    moved.load_state_dict(model.state_dict())
    moved_opt = adam(moved)
    moved_opt.load_state_dict(copy.deepcopy(flat.optimizer.state_dict()))
    # torch -> flat: state loaded into the flat optimizer's torch Adam is taken over
    flat.optimizer.load_state_dict(copy.deepcopy(twin_opt.state_dict()))
    for x, y in data[3:]:
        flat.step(grads_of(model, x, y))
        torch_step(twin, twin_opt, x, y)
        torch_step(moved, moved_opt, x, y)
    assert_same(model, twin)
    assert_same(moved, twin)


def test_reset_is_a_fresh_adam_and_keeps_the_states_tensors():
    model, twin = odd_net(), odd_net()
    flat = FlatAdam(adam(model))
    data = batches(model, 6)
    for x, y in data[:3]:
        flat.step(grads_of(model, x, y))
    twin.load_state_dict(model.state_dict())
    held = flat.optimizer.state[flat.params[0]]["exp_avg_sq"]
    assert flat.reset()
    assert flat.optimizer.state[flat.params[0]]["exp_avg_sq"] is held
    assert float(flat.optimizer.state[flat.params[0]]["step"]) == 0.0
    assert_goes_on_like_a_fresh_adam(flat, model, twin, data[3:])


def test_a_cleared_state_starts_fresh_at_the_next_step():
    model, twin = odd_net(), odd_net()
    flat = FlatAdam(adam(model))
    data = batches(model, 4)
    flat.step(grads_of(model, *data[0]))
    twin.load_state_dict(model.state_dict())
    flat.optimizer.state.clear()
    assert not flat.reset()  # nothing of its own to reset
    assert_goes_on_like_a_fresh_adam(flat, model, twin, data[1:])


def test_state_with_unequal_step_counts_is_left_to_torch():
    model, twin = odd_net(), odd_net()
    flat, twin_opt = FlatAdam(adam(model)), adam(twin)
    x, y = batches(model, 1)[0]
    torch_step(twin, twin_opt, x, y)
    twin_opt.state[list(twin.parameters())[0]]["step"] += 1  # a state flat buffers cannot hold
    model.load_state_dict(twin.state_dict())
    flat.optimizer.load_state_dict(copy.deepcopy(twin_opt.state_dict()))
    flat.step(grads_of(model, x, y))
    torch_step(twin, twin_opt, x, y)
    assert_same(model, twin)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "options",
    [{"amsgrad": True}, {"weight_decay": 0.1}, {"maximize": True}, {"lr": torch.tensor(1e-3)}],
    ids=["amsgrad", "weight-decay", "maximize", "tensor-lr"],
)
def test_adam_options_it_does_not_implement_keep_torchs_step(options):
    base = {"lr": 1e-3, "betas": (0.0, 0.999)} | options
    optimizer = torch.optim.Adam(odd_net().parameters(), **base)
    assert not FlatAdam.applies_to(optimizer)
    with pytest.raises(ValueError, match="plain CPU torch.optim.Adam"):
        FlatAdam(optimizer)


def test_sgd_and_other_optimizers_are_not_flat_adam():
    assert not FlatAdam.applies_to(torch.optim.SGD(odd_net().parameters(), lr=0.1))
    assert not FlatAdam.applies_to(torch.optim.AdamW(odd_net().parameters()))


def test_the_learner_uses_flat_adam_on_the_cpu_with_torchs_result(monkeypatch):
    config = preset("omniglot-5way-1shot")
    flat_learner = Learner.from_config(conv_net(), config)
    with monkeypatch.context() as m:  # the update is chosen when the learner is built
        m.setattr(FlatAdam, "applies_to", staticmethod(lambda optimizer: False))
        torch_learner = Learner.from_config(conv_net(), config)
    assert flat_learner.flat_adam is not None and torch_learner.flat_adam is None
    for i, (x, y) in enumerate(batches(flat_learner.model, 8)):
        if i == 4:  # a new task: fresh moments unless kept
            flat_learner.reset_optimizer_state()
            torch_learner.reset_optimizer_state()
        flat_learner.step(x, y)
        torch_learner.step(x, y)
    assert_same(flat_learner.model, torch_learner.model)
    snapshot = flat_learner.optimizer_snapshot()
    assert set(next(iter(snapshot.values()))) == {"step", "exp_avg", "exp_avg_sq"}


def test_state_dict_holds_copies_that_pickle_small_and_the_buffers_stay_bound():
    model, twin = conv_net(), conv_net()
    flat, twin_opt = FlatAdam(adam(model)), adam(twin)
    x, y = batches(model, 1)[0]
    flat.step(grads_of(model, x, y))
    torch_step(twin, twin_opt, x, y)
    state_dict = flat.optimizer.state_dict()
    # views would pickle their whole buffer each: 16 MB instead of under 1 MB here
    assert len(pickle.dumps(state_dict)) < 1.05 * len(pickle.dumps(twin_opt.state_dict()))
    first = flat.optimizer.state[flat.params[0]]
    assert state_dict["state"][0]["exp_avg_sq"] is not first["exp_avg_sq"]
    assert flat.reset()  # still its own buffers: state_dict() changed nothing in the optimizer
    assert float(state_dict["state"][0]["step"]) == 1.0  # a copy, not the live (reset) state


@pytest.mark.parametrize(
    "changes",
    [
        {"keep_adam_state": True},
        {"keep_adam_state": False},
        {"keep_adam_state": True, "algorithm": "fomaml", "fomaml_tail_shots": 2},
    ],
    ids=["chained-reptile", "fresh-reptile", "chained-fomaml"],
)
def test_a_training_run_with_flat_adam_is_the_run_with_torchs_adam(monkeypatch, tmp_path, changes):
    from metatrain import train
    from metatrain.checkpoint import load_checkpoint
    from tests.metatrain.synthetic import synthetic_splits, tiny_config

    splits = synthetic_splits(seed=5)
    for module in ("metatrain.train", "metatrain.evaluate"):  # the modules, not the functions
        monkeypatch.setattr(importlib.import_module(module), "load_class_splits", lambda c: splits)
    config = tiny_config(meta_iters=8, **changes)
    flat = train(config, tmp_path / "flat", compute=Compute(device="cpu"))
    with monkeypatch.context() as m:
        m.setattr(FlatAdam, "applies_to", staticmethod(lambda optimizer: False))
        plain = train(config, tmp_path / "torch", compute=Compute(device="cpu"))
    assert flat.iterations_done == plain.iterations_done == 8
    a = load_checkpoint(tmp_path / "flat" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "torch" / "checkpoint.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for i, state in b["optimizer"]["state"].items():
        assert all(torch.equal(state[k], a["optimizer"]["state"][i][k]) for k in state)
    assert _timeless(tmp_path / "flat") == _timeless(tmp_path / "torch")


def _timeless(run_dir) -> list[dict]:
    """metrics.jsonl without its wall-clock fields."""
    records = []
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
        for line in f:
            record = {k: v for k, v in json.loads(line).items() if k != "seconds"}
            if "validation" in record:
                record["validation"] = {**record["validation"], "seconds": None}
            records.append(record)
    return records


@pytest.mark.parametrize("make", [conv_net, odd_net], ids=["conv", "odd"])
def test_a_step_applied_in_ranges_in_any_order_is_the_whole_step_bit_for_bit(make):
    # The threaded backward applies Adam in pieces (the first block here, the rest on the
    # helper thread): together they must be exactly one step of the whole network's.
    whole_model, split_model = make(), make()
    whole, split = FlatAdam(adam(whole_model)), FlatAdam(adam(split_model))
    count = len(split.params)
    cuts = sorted({0, 1, count // 2, count})
    for x, y in batches(whole_model, 4):
        whole.step(grads_of(whole_model, x, y))
        grads = list(grads_of(split_model, x, y))
        scalars = split.begin_step()
        assert scalars is not None
        for first, last in reversed(list(zip(cuts, cuts[1:], strict=False))):
            split.apply(scalars, first, last, grads)
    assert_same(whole_model, split_model)
    for key in ("exp_avg", "exp_avg_sq", "step"):
        for p, q in zip(whole_model.parameters(), split_model.parameters(), strict=True):
            assert torch.equal(whole.optimizer.state[p][key], split.optimizer.state[q][key])


def test_begin_step_leaves_state_it_cannot_hold_to_torch():
    model = odd_net()
    optimizer = adam(model)
    flat = FlatAdam(optimizer)
    optimizer.param_groups[0]["amsgrad"] = True  # no longer a plain Adam
    assert flat.begin_step() is None
