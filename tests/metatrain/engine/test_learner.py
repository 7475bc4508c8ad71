"""The learner: its inner optimizer checked against hand computation and torch's own, its
state kept and restored exactly, and every kind of inner step giving autograd's numbers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from metatrain import Config
from metatrain.engine.learner import Learner
from metatrain.losses import MSE, SUMMED_CROSS_ENTROPY
from tests.metatrain import linear_tasks as lt

# --- inner optimizer ---------------------------------------------------------------------


def test_classification_minimises_the_summed_cross_entropy():
    g = np.random.default_rng(0)
    x = g.normal(size=(4, 3)).astype(np.float32)
    y = np.array([0, 1, 1, 0])
    model = nn.Linear(3, 2)
    w0 = model.weight.detach().double().numpy().copy()
    b0 = model.bias.detach().double().numpy().copy()
    learner = Learner(model, loss=SUMMED_CROSS_ENTROPY, optimizer="sgd", lr=lt.LR)
    learner.step(torch.from_numpy(x), torch.from_numpy(y))
    logits = x.astype(np.float64) @ w0.T + b0
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d = p - np.eye(2)[y]  # d(sum of CE)/d logits, not divided by the batch size
    assert model.weight.detach().double().numpy() == pytest.approx(w0 - lt.LR * d.T @ x, abs=1e-6)
    assert model.bias.detach().double().numpy() == pytest.approx(b0 - lt.LR * d.sum(0), abs=1e-6)


def test_adam_has_beta1_zero_and_matches_the_hand_computed_update():
    w, b = 0.2, -0.1
    x, y = lt.task(1)[:2]
    learner = Learner(lt.linear(w, b), loss=MSE, optimizer="adam", lr=lt.LR, beta2=0.9)
    assert learner.optimizer.param_groups[0]["betas"] == (0.0, 0.9)
    assert learner.optimizer.param_groups[0]["eps"] == 1e-8
    xs, ys = x.double().numpy().ravel(), y.double().numpy().ravel()
    v = np.zeros(2)
    p = np.array([w, b])
    for t in (1, 2):
        learner.step(x, y)
        r = p[0] * xs + p[1] - ys
        grad = np.array([2 * np.mean(r * xs), 2 * np.mean(r)])
        v = 0.9 * v + 0.1 * grad**2
        # beta1 = 0: the first moment is the gradient itself, no bias correction for it.
        p = p - lt.LR * grad / (np.sqrt(v / (1 - 0.9**t)) + 1e-8)
        assert lt.params(learner.model) == pytest.approx(tuple(p), abs=1e-6)


def _adam_steps(learner: Learner) -> float:
    return float(learner.optimizer.state[learner.params[0]]["step"])


def test_adam_state_persists_across_training_tasks_when_kept():
    kept = lt.regression_learner(0.2, -0.1, optimizer="adam", keep_state=True)
    fresh = lt.regression_learner(0.2, -0.1, optimizer="adam", keep_state=False)
    cfg = lt.config(inner_optimizer="adam", meta_batch=2, inner_iters=3)
    tasks = [lt.task(1), lt.task(2)]
    lt.meta_step(kept, cfg)(lt.sampler(tasks), 1.0, np.random.default_rng(0))
    lt.meta_step(fresh, cfg)(lt.sampler(tasks), 1.0, np.random.default_rng(0))
    assert _adam_steps(kept) == 6  # both tasks' steps accumulated
    assert _adam_steps(fresh) == 3  # the last task's only: each task began from scratch
    assert lt.params(kept.model) != pytest.approx(lt.params(fresh.model), abs=1e-7)


def test_sgd_never_keeps_state():
    learner = lt.regression_learner(0.2, -0.1, optimizer="sgd", keep_state=True)
    assert learner.keep_state is False


def test_optimizer_snapshot_restores_exactly():
    learner = lt.regression_learner(0.2, -0.1, optimizer="adam")
    x, y = lt.task(1)[:2]
    learner.step(x, y)
    snap = learner.optimizer_snapshot()
    before = {k: v.clone() for k, v in learner.optimizer.state[learner.params[0]].items()}
    learner.step(x, y)
    learner.step(x, y)
    learner.optimizer_restore(snap)
    after = learner.optimizer.state[learner.params[0]]
    assert all(torch.equal(before[k], after[k]) for k in before)
    learner.optimizer.state.clear()  # a different layout: restored by rebuilding
    learner.optimizer_restore(snap)
    assert torch.equal(
        learner.optimizer.state[learner.params[0]]["exp_avg_sq"], before["exp_avg_sq"]
    )


def test_an_sgd_learner_steps_exactly_as_torch_optim_sgd():
    """The learner applies plain SGD itself (faster on tiny MLPs); the weights must be the
    ones torch.optim.SGD(foreach=True) gives, bit for bit."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1))
    reference = copy.deepcopy(model)
    initial = [p.detach().clone() for p in model.parameters()]
    learner = Learner(model, loss=MSE, optimizer="sgd", lr=0.02)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.02, foreach=True)
    for _ in range(50):
        x = torch.rand(10, 1) * 10 - 5
        y = torch.sin(x)
        learner.step(x, y)
        loss = torch.nn.functional.mse_loss(reference(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for mine, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    assert not torch.equal(initial[0], model[0].weight)  # it did train


# --- the kinds of inner step (metatrain.engine.steps) -------------------------------------


def _image_tasks(config: Config, count: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    n, tail = config.ways * config.train_shots, config.ways * config.fomaml_tail_shots
    shape = (config.in_channels, config.image_size, config.image_size)

    def images(k: int) -> torch.Tensor:
        return torch.rand((k, *shape), generator=g).contiguous(memory_format=torch.channels_last)

    return [
        (
            images(n),
            torch.arange(config.ways).repeat_interleave(config.train_shots),
            images(tail),
            torch.arange(config.ways).repeat_interleave(config.fomaml_tail_shots),
        )
        for _ in range(count)
    ]


@pytest.mark.parametrize(
    ("algorithm", "inner_iters"), [("reptile", 3), ("fomaml", 3), ("fomaml", 1)]
)
def test_manual_and_threaded_steps_give_autograds_numbers(algorithm, inner_iters, monkeypatch):
    # Each task of a meta-batch starts from theta, so the helper thread computes the first
    # step's gradients of tasks 2..n ahead, chained Adam or not: the same bits as one thread.
    from metatrain.config import preset
    from metatrain.engine.by_hand import ThreadedBackward
    from metatrain.models import build_model

    config = preset("omniglot-5way-1shot").replace(
        algorithm=algorithm, inner_iters=inner_iters, meta_batch=3, fomaml_tail_shots=2
    )
    tasks = _image_tasks(config, 3 * config.meta_batch, seed=0)
    later_calls: list[int] = []
    real_later = ThreadedBackward.later

    def counting_later(self, x, y, weights):
        later_calls.append(len(x))
        return real_later(self, x, y, weights)

    monkeypatch.setattr(ThreadedBackward, "later", counting_later)
    results = []
    # Autograd's own steps, the kernels called by hand on one thread, and on two threads.
    for kind in ("autograd", "by_hand", "helper_thread"):
        model = build_model(config, generator=torch.Generator().manual_seed(1))
        model.to(memory_format=torch.channels_last)
        learner = Learner.from_config(model, config, step=kind)
        assert learner.step_kind == kind
        assert learner.computes_ahead is (kind == "helper_thread")
        step = lt.meta_step(learner, config)
        sample, rng = lt.sampler(tasks), np.random.default_rng(5)
        try:
            metrics = [step(sample, 0.5, rng) for _ in range(3)]
        finally:
            learner.close()
        state = learner.optimizer.state_dict()["state"]
        results.append(([p.detach().clone() for p in learner.params], metrics, state))
    (auto, auto_metrics, auto_state), *others = results
    for weights, metrics, state in others:
        assert all(torch.equal(a, b) for a, b in zip(auto, weights, strict=True))
        assert metrics == auto_metrics
        for i, moments in auto_state.items():
            assert all(
                torch.equal(torch.as_tensor(v), torch.as_tensor(state[i][k]))
                for k, v in moments.items()
            )
    first_batch = config.inner_batch if inner_iters > 1 else config.ways * 2  # FOMAML's tail
    assert later_calls == [first_batch] * (3 * (config.meta_batch - 1))


def test_a_meta_step_that_fails_part_way_leaves_the_helper_ready_for_the_next(monkeypatch):
    from metatrain.config import preset
    from metatrain.models import build_model

    config = preset("omniglot-5way-1shot").replace(meta_batch=3, inner_iters=2)
    model = build_model(config, generator=torch.Generator().manual_seed(1))
    learner = Learner.from_config(
        model.to(memory_format=torch.channels_last), config, helper_thread=True
    )
    assert learner.step_kind == "helper_thread"
    step = lt.meta_step(learner, config)
    real_step, steps = Learner._take_step, []

    def failing_step(self, *args, **kwargs):
        steps.append(1)
        if len(steps) == 3:  # in the second task, whose first step the helper computed
            raise RuntimeError("inner step failed")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Learner, "_take_step", failing_step)
    tasks = _image_tasks(config, 2 * config.meta_batch, seed=0)
    sample, rng = lt.sampler(tasks), np.random.default_rng(5)
    try:
        with pytest.raises(RuntimeError, match="inner step failed"):
            step(sample, 0.5, rng)
        metrics = step(sample, 0.5, rng)
    finally:
        learner.close()
    assert np.isfinite(metrics["inner_loss"])
    assert all(torch.isfinite(p).all() for p in learner.params)
