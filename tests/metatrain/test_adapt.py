"""metatrain.adapt: one person's task adapted with the evaluation's settings gives what the
evaluation path (``metatrain.engine.tasks.score_task``) computes on the same task."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch

from metatrain import adapt
from metatrain.config import preset
from metatrain.data import SineTaskSampler, TaskSampler, batch_order
from metatrain.engine.learner import Learner
from metatrain.engine.tasks import TaskContext, predict_each, score_task
from metatrain.models import build_model
from metatrain.seeding import init_generator
from tests.metatrain.synthetic import synthetic_splits, tiny_config


def _engine_adapted(model, config, task, seed):
    """The evaluation path: a fresh learner adapts with the order evaluation would draw."""
    learner = Learner.from_config(model, config, cuda_graphs=False)
    ctx = TaskContext(learner, config)
    ctx.start_task()
    order = batch_order(
        len(task.support_x),
        config.eval_inner_batch,
        config.eval_inner_iters,
        np.random.default_rng(seed),
    )
    score, before = score_task(ctx, task, order, config.transductive)
    return learner.model, score, before


@pytest.mark.parametrize("transductive", [True, False])
def test_classify_matches_the_evaluation_path_on_one_task(transductive):
    config = tiny_config(transductive=transductive, eval_inner_iters=5)
    splits = synthetic_splits(0)
    task = TaskSampler(splits.test, 3, 1, 2, np.random.default_rng(1)).sample()
    trained = adapt.network(config, seed=3)

    probs = adapt.classify(
        copy.deepcopy(trained), config, task.support_x, task.support_y, task.query_x, seed=7
    )
    adapted, score, _ = _engine_adapted(copy.deepcopy(trained), config, task, seed=7)

    with torch.no_grad():
        if transductive:
            logits = adapted(task.query_x)
        else:
            logits = predict_each(adapted, task.support_x, task.query_x)
    assert torch.equal(probs, torch.softmax(logits[:, :3], dim=1))
    assert float((probs.argmax(1) == task.query_y).float().mean()) == float(score)
    assert probs.shape == (6, 3)
    assert torch.allclose(probs.sum(1), torch.ones(6))


def test_fit_sine_after_all_steps_matches_the_evaluation_loss():
    config = preset("sine", eval_inner_iters=32)
    task = SineTaskSampler(np.random.default_rng(0), 10).sample()
    model = adapt.network(config, seed=1)

    fits = adapt.fit_sine(
        copy.deepcopy(model), config, task.support_x, task.support_y, task.query_x, seed=5
    )
    _, after, before = _engine_adapted(copy.deepcopy(model), config, task, seed=5)

    assert sorted(fits) == [0, 1, 32]
    mse = torch.nn.functional.mse_loss
    assert torch.equal(mse(fits[0], task.query_y), before)
    assert torch.allclose(mse(fits[32], task.query_y), after, rtol=0, atol=1e-6)
    # one step moved the fit, 32 moved it further towards the task
    assert not torch.equal(fits[0], fits[1])
    assert float(mse(fits[32], task.query_y)) < float(before)


def test_network_without_weights_is_the_runs_own_start():
    config = tiny_config()
    start = build_model(config, generator=init_generator(config.seed))
    again = adapt.network(config, seed=config.seed)
    for a, b in zip(start.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_network_loads_weights_strictly():
    config = tiny_config()
    weights = adapt.network(config, seed=9).state_dict()
    loaded = adapt.network(config, weights, seed=0)
    assert torch.equal(loaded.state_dict()["fc.weight"], weights["fc.weight"])
    with pytest.raises(RuntimeError):
        adapt.network(config, {"fc.weight": weights["fc.weight"]})


def test_it_refuses_more_classes_than_the_network_has_outputs():
    config = tiny_config()  # 3 outputs
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match="3 outputs"):
        adapt.classify(adapt.network(config), config, x, torch.arange(4), x[:1])


def test_a_passed_deadline_stops_adaptation():
    config = tiny_config()
    x = torch.rand(3, 1, 8, 8)
    with pytest.raises(adapt.AdaptTimeout):
        adapt.classify(
            adapt.network(config), config, x, torch.arange(3), x, deadline=time.monotonic() - 1
        )
