"""Reptile / FOMAML as objects: their outer updates checked against hand computation, and the
registry that config validation, the command line and the dashboard ask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from metatrain import Config, ConfigError, reference
from metatrain.algorithms import ALGORITHMS, FOMAML, Reptile, algorithm_of, meta_step_size
from metatrain.data import batch_order
from metatrain.engine.learner import Learner
from metatrain.losses import MSE, SUMMED_CROSS_ENTROPY
from tests.metatrain import linear_tasks as lt


def _sgd(w: float, b: float, x: np.ndarray, y: np.ndarray, steps: int) -> tuple[float, float]:
    """Gradient descent on the mean squared error of y ~ w x + b, in float64."""
    x, y = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
    for _ in range(steps):
        r = w * x + b - y
        w, b = w - lt.LR * 2 * np.mean(r * x), b - lt.LR * 2 * np.mean(r)
    return w, b


# --- schedule ---------------------------------------------------------------------------


def test_meta_step_size_anneals_linearly_as_the_papers_code():
    cfg = Config(meta_step=1.0, meta_step_final=0.0, meta_iters=4)
    assert [meta_step_size(cfg, i) for i in (1, 2, 3, 4)] == [1.0, 0.75, 0.5, 0.25]
    cfg = Config(meta_step=0.5, meta_step_final=0.1, meta_iters=10)
    assert meta_step_size(cfg, 6) == pytest.approx(0.5 * 0.5 + 0.5 * 0.1)


# --- Reptile -----------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [1.0, 0.3])
def test_reptile_one_task_moves_towards_the_adapted_weights(eps):
    w0, b0 = 0.2, -0.1
    task = lt.task(1)
    learner = lt.regression_learner(w0, b0)
    lt.meta_step(learner, lt.config(meta_batch=1))(
        lt.sampler([task]), eps, np.random.default_rng(0)
    )
    pw, pb = _sgd(w0, b0, task[0].numpy(), task[1].numpy(), 3)
    expected = (w0 + eps * (pw - w0), b0 + eps * (pb - b0))
    assert lt.params(learner.model) == pytest.approx(expected, abs=1e-6)


def test_reptile_two_tasks_average_the_adapted_weights():
    w0, b0, eps = 0.2, -0.1, 0.6
    tasks = [lt.task(1), lt.task(2)]
    learner = lt.regression_learner(w0, b0)
    step = lt.meta_step(learner, lt.config(meta_batch=2))
    metrics = step(lt.sampler(tasks), eps, np.random.default_rng(0))
    phis = [_sgd(w0, b0, t[0].numpy(), t[1].numpy(), 3) for t in tasks]
    mean_w = (phis[0][0] + phis[1][0]) / 2
    mean_b = (phis[0][1] + phis[1][1]) / 2
    expected = (w0 + eps * (mean_w - w0), b0 + eps * (mean_b - b0))
    assert lt.params(learner.model) == pytest.approx(expected, abs=1e-6)
    assert set(metrics) == {"inner_loss"}  # regression: no accuracy
    assert metrics["inner_loss"] > 0


def test_every_task_starts_from_the_meta_weights():
    w0, b0 = 0.2, -0.1
    learner = lt.regression_learner(w0, b0)
    seen = []
    tasks = iter([lt.task(1), lt.task(2), lt.task(3)])

    def sample():
        seen.append(lt.params(learner.model))
        return next(tasks)

    ticks = []
    lt.meta_step(learner, lt.config(meta_batch=3))(
        sample, 1.0, np.random.default_rng(0), tick=lambda: ticks.append(1)
    )
    assert seen == [(pytest.approx(w0), pytest.approx(b0))] * 3
    assert len(ticks) == 3


# --- FOMAML ------------------------------------------------------------------------------


def _fomaml_update(w0: float, b0: float, task) -> tuple[float, float]:
    """inner_iters - 1 = 2 steps on the support, then the update of one step on the tail."""
    x, y, tx, ty = (t.numpy() for t in task)
    w1, b1 = _sgd(w0, b0, x, y, 2)
    w2, b2 = _sgd(w1, b1, tx, ty, 1)
    return w2 - w1, b2 - b1


def test_fomaml_one_task_applies_the_last_steps_update():
    w0, b0, eps = 0.2, -0.1, 0.7
    task = lt.task(4)
    learner = lt.regression_learner(w0, b0)
    lt.meta_step(learner, lt.config(algorithm="fomaml"))(
        lt.sampler([task]), eps, np.random.default_rng(0)
    )
    uw, ub = _fomaml_update(w0, b0, task)
    assert lt.params(learner.model) == pytest.approx((w0 + eps * uw, b0 + eps * ub), abs=1e-6)


def test_fomaml_two_tasks_average_the_updates():
    w0, b0, eps = 0.2, -0.1, 0.7
    tasks = [lt.task(4), lt.task(5)]
    learner = lt.regression_learner(w0, b0)
    config = lt.config(algorithm="fomaml", meta_batch=2)
    assert isinstance(algorithm_of(config), FOMAML)
    lt.meta_step(learner, config)(lt.sampler(tasks), eps, np.random.default_rng(0))
    updates = [_fomaml_update(w0, b0, t) for t in tasks]
    expected = (
        w0 + eps * (updates[0][0] + updates[1][0]) / 2,
        b0 + eps * (updates[0][1] + updates[1][1]) / 2,
    )
    assert lt.params(learner.model) == pytest.approx(expected, abs=1e-6)


def test_fomaml_with_one_inner_iteration_uses_only_the_tail():
    w0, b0, eps = 0.2, -0.1, 1.0
    task = lt.task(6)
    learner = lt.regression_learner(w0, b0)
    lt.meta_step(learner, lt.config(algorithm="fomaml", inner_iters=1))(
        lt.sampler([task]), eps, np.random.default_rng(0)
    )
    expected = _sgd(w0, b0, task[2].numpy(), task[3].numpy(), 1)
    assert lt.params(learner.model) == pytest.approx(expected, abs=1e-6)


def _shared_tail_case(inner_batch: int = 2):
    """A task without tail examples (fomaml_tail_shots 0), its config, and the update of the
    last of inner_iters = 3 mini-batches of 2 of its 4 examples, drawn as the engine draws
    them from ``default_rng(0)``."""
    x, y, _, _ = lt.task(4)
    task = (x, y, x[:0], y[:0])
    config = lt.config(algorithm="fomaml", fomaml_tail_shots=0, inner_batch=inner_batch)
    order = batch_order(4, inner_batch, 3, np.random.default_rng(0))
    w, b = 0.2, -0.1
    for rows in order[:-1]:
        w, b = _sgd(w, b, x.numpy()[rows], y.numpy()[rows], 1)
    w3, b3 = _sgd(w, b, x.numpy()[order[-1]], y.numpy()[order[-1]], 1)
    return task, config, (w3 - w, b3 - b)


def test_fomaml_with_a_shared_tail_applies_the_last_mini_batch_s_update():
    w0, b0, eps = 0.2, -0.1, 0.7
    task, config, (uw, ub) = _shared_tail_case()
    assert ALGORITHMS["fomaml"].inner_steps(config) == 3 and config.training_shots == 4
    learner = lt.regression_learner(w0, b0)
    lt.meta_step(learner, config)(lt.sampler([task]), eps, np.random.default_rng(0))
    assert lt.params(learner.model) == pytest.approx((w0 + eps * uw, b0 + eps * ub), abs=1e-6)


def test_the_reference_fomaml_with_a_shared_tail_is_the_hand_computed_update():
    w0, b0, eps = 0.2, -0.1, 0.7
    task, config, (uw, ub) = _shared_tail_case()
    model = lt.linear(w0, b0)
    optimizer = reference.inner_optimizer(model, config)
    reference.fomaml_meta_step(
        model, optimizer, lt.sampler([task]), config, eps, np.random.default_rng(0)
    )
    assert lt.params(model) == pytest.approx((w0 + eps * uw, b0 + eps * ub), abs=1e-6)


def test_reptile_reports_inner_accuracy_for_classification():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    learner = Learner(model, loss=SUMMED_CROSS_ENTROPY, optimizer="adam", lr=0.01)
    cfg = Config(inner_batch=6, inner_iters=2, meta_batch=2)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 2, 2, generator=g)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    metrics = lt.meta_step(learner, cfg)(
        lt.sampler([(x, y, x[:0], y[:0])] * 2), 1.0, np.random.default_rng(0)
    )
    assert set(metrics) == {"inner_loss", "inner_accuracy"}
    assert 0.0 <= metrics["inner_accuracy"] <= 1.0


# --- the registry ------------------------------------------------------------------------


def test_every_algorithm_is_registered_under_its_config_name():
    assert list(ALGORITHMS) == ["reptile", "fomaml"]
    assert [type(a) for a in ALGORITHMS.values()] == [Reptile, FOMAML]
    assert Config.FIELD_CHOICES["algorithm"] == ("reptile", "fomaml")
    for name, algorithm in ALGORITHMS.items():
        assert algorithm.name == name and algorithm.label and algorithm.description
        assert algorithm_of(Config(algorithm=name)) is algorithm
        assert set(algorithm.fields) <= set(Config.FIELD_HELP)  # real config fields


def test_the_config_asks_the_algorithm_what_a_task_draws_and_which_fields_it_checks():
    reptile, fomaml = Config(train_shots=7), Config(algorithm="fomaml", train_shots=7)
    assert (reptile.training_shots, fomaml.training_shots) == (7, 7 + fomaml.fomaml_tail_shots)
    assert ALGORITHMS["reptile"].explain_training_shots(reptile) == "train_shots = 7"
    assert ALGORITHMS["fomaml"].explain_training_shots(fomaml) == (
        "train_shots + fomaml_tail_shots = 7 + 5 = 12"
    )
    assert ALGORITHMS["fomaml"].fields == {"fomaml_tail_shots": 0}  # 0: the shared tail
    shared = fomaml.replace(fomaml_tail_shots=0)
    assert shared.training_shots == 7
    assert ALGORITHMS["fomaml"].explain_training_shots(shared) == "train_shots = 7"
    with pytest.raises(ConfigError) as info:
        Config(algorithm="reptile", fomaml_tail_shots=-1)
    assert info.value.field == "fomaml_tail_shots"
    with pytest.raises(ConfigError) as info:
        Config(algorithm="maml")
    assert info.value.field == "algorithm" and "reptile, fomaml" in info.value.message


def test_each_algorithm_owns_its_loss_inner_steps_and_tail():
    for name in ALGORITHMS:
        assert algorithm_of(Config(algorithm=name)).loss(Config()) is SUMMED_CROSS_ENTROPY
    sine = Config(dataset="sine", model="sine_mlp", inner_iters=4, algorithm="fomaml")
    assert ALGORITHMS["reptile"].loss(sine) is MSE
    assert ALGORITHMS["reptile"].inner_steps(sine) == 4
    assert ALGORITHMS["fomaml"].inner_steps(sine) == 3  # its last step is the tail's
    assert ALGORITHMS["fomaml"].inner_steps(sine.replace(fomaml_tail_shots=0)) == 4  # shared
    assert ALGORITHMS["reptile"].tail_shots(sine) == 0
    assert ALGORITHMS["fomaml"].tail_shots(sine) == sine.fomaml_tail_shots
