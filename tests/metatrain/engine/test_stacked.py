"""metatrain.engine.stacked: many regression tasks adapted at once give each task what the
one-task loop gives it (up to rounding), whatever the number of tasks stacked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from metatrain import Compute, Reporter, evaluate, preset, train
from metatrain.data import SineTaskSampler, batch_order
from metatrain.engine.compute import useful_workers
from metatrain.engine.learner import Learner
from metatrain.engine.meta_step import MetaStep
from metatrain.engine.runners import SerialRunner, StackedRunner
from metatrain.engine.stacked import (
    evaluate_regression_tasks,
    stackable,
    stacked_adapt,
    stacked_forward,
)
from metatrain.engine.tasks import TaskContext, score_task
from metatrain.models import build_model
from tests.metatrain.synthetic import tiny_config


def _sine_tasks(count: int, seed: int = 0, steps: int = 8, batch: int = 5):
    rng = np.random.default_rng(seed)
    sampler = SineTaskSampler(rng, 10)
    tasks = [sampler.sample() for _ in range(count)]
    orders = [batch_order(10, batch, steps, rng) for _ in tasks]
    return tasks, orders


def _mlp(inputs: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(inputs, 16), nn.Tanh(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1)
    )


def test_only_mlps_of_linear_layers_and_elementwise_activations_with_sgd_are_stacked():
    sine = build_model(preset("sine"))
    assert stackable(sine, "sgd")
    assert not stackable(sine, "adam")  # its moments are state; stacking covers SGD only
    assert not stackable(build_model(preset("omniglot-5way-1shot")), "sgd")
    assert not stackable(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), "sgd")
    assert not stackable(nn.Sequential(nn.Linear(2, 2, bias=False)), "sgd")
    assert not stackable(nn.Sequential(), "sgd")
    assert not stackable(nn.Linear(2, 2), "sgd")


@pytest.mark.parametrize("inputs", [1, 3])
def test_the_stacked_forward_pass_is_each_tasks_own_forward_pass(inputs):
    model = _mlp(inputs)
    tasks = 5
    weights = [
        p.detach() + 0.1 * torch.randn(tasks, *p.shape) for p in model.parameters()
    ]  # every task its own weights
    x = torch.randn(tasks, 7, inputs)
    out = stacked_forward(model, weights, x)
    for t in range(tasks):
        own = nn.utils.parameters_to_vector([w[t] for w in weights])
        nn.utils.vector_to_parameters(own, model.parameters())
        torch.testing.assert_close(out[t], model(x[t]), rtol=1e-6, atol=1e-6)


def test_stacked_sgd_gives_each_task_the_weights_the_one_task_loop_gives():
    cfg = preset("sine", inner_lr=0.005)
    model = build_model(cfg, torch.Generator().manual_seed(1))
    learner = Learner.from_config(model, cfg)
    theta = learner.copy_params()
    tasks, orders = _sine_tasks(6)
    xs = torch.stack([t.support_x for t in tasks])
    ys = torch.stack([t.support_y for t in tasks])
    stacked = stacked_adapt(model, theta, xs, ys, np.stack(orders), lr=0.005)
    for t, (task, order) in enumerate(zip(tasks, orders, strict=True)):
        learner.load_params(theta)
        learner.adapt(task.support_x, task.support_y, order)
        for mine, stack in zip(learner.params, stacked, strict=True):
            torch.testing.assert_close(stack[t], mine.detach(), rtol=1e-5, atol=1e-6)
        assert not torch.equal(learner.params[0].detach(), theta[0])  # it did move


def test_with_a_fixed_stack_size_a_tasks_numbers_do_not_depend_on_its_neighbours():
    cfg = preset("sine")
    model = build_model(cfg, torch.Generator().manual_seed(0))
    theta = [p.detach().clone() for p in model.parameters()]
    tasks, orders = _sine_tasks(12, steps=32, batch=10)
    whole = evaluate_regression_tasks(model, theta, tasks, orders, 0.02, pad_to=16)
    for size in (1, 3, 5):
        parts = [
            evaluate_regression_tasks(
                model, theta, tasks[i : i + size], orders[i : i + size], 0.02, pad_to=16
            )
            for i in range(0, 12, size)
        ]
        assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])
        assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])


def test_evaluation_losses_match_the_one_task_loop():
    cfg = preset("sine", inner_lr=0.005, final_eval_tasks=30)
    model = build_model(cfg, torch.Generator().manual_seed(2))
    stacked = evaluate(model, cfg, compute=Compute(device="cpu"))
    one_by_one = evaluate(model, cfg, compute=Compute(device="cpu", stack_tasks=False))
    assert stacked.tasks == one_by_one.tasks == 30
    assert stacked.loss_before == pytest.approx(one_by_one.loss_before, rel=1e-6)
    assert stacked.loss_after == pytest.approx(one_by_one.loss_after, rel=1e-5)
    assert stacked.ci95 == pytest.approx(one_by_one.ci95, rel=1e-4)
    assert stacked.loss_after < stacked.loss_before


def test_the_per_task_helper_agrees_with_the_stacked_one_on_a_single_task():
    cfg = preset("sine", inner_lr=0.005, eval_inner_iters=8, eval_inner_batch=5)
    model = build_model(cfg, torch.Generator().manual_seed(3))
    learner = Learner.from_config(model, cfg)
    theta = learner.copy_params()
    tasks, orders = _sine_tasks(1)
    after, before = evaluate_regression_tasks(model, theta, tasks, orders, 0.005, pad_to=8)
    one_after, one_before = score_task(TaskContext(learner, cfg), tasks[0], orders[0], True)
    assert after.shape == before.shape == (1,)
    assert float(after[0]) == pytest.approx(float(one_after), rel=1e-5)
    assert float(before[0]) == pytest.approx(float(one_before), rel=1e-6)


def test_a_stop_request_keeps_the_tasks_finished_with_their_own_numbers():
    class StopAfter(Reporter):
        polls = 0

        def should_stop(self) -> bool:
            self.polls += 1
            return self.polls > 7

    cfg = preset("sine", final_eval_tasks=250)
    model = build_model(cfg, torch.Generator().manual_seed(0))
    stopped = evaluate(model, cfg, compute=Compute(device="cpu"), reporter=StopAfter())
    assert stopped.stopped and stopped.tasks == 7
    seven = evaluate(model, cfg, tasks=7, compute=Compute(device="cpu"))
    assert (stopped.loss_after, stopped.loss_before) == (seven.loss_after, seven.loss_before)


def test_the_evaluation_leaves_the_weights_as_they_were():
    cfg = preset("sine", final_eval_tasks=5)
    model = build_model(cfg, torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in model.parameters()]
    evaluate(model, cfg, compute=Compute(device="cpu"))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (preset("sine"), 1),  # stacked: nothing for workers to do
        (preset("sine", meta_batch=4), 1),  # a meta-batch of SGD tasks is stacked too
        (preset("sine", meta_batch=4, inner_optimizer="adam", keep_adam_state=False), 3),
        (preset("omniglot-5way-1shot"), 3),  # chained Adam trains serially; evaluation does not
        (tiny_config(keep_adam_state=False, meta_batch=1), 3),
    ],
)
def test_task_workers_are_started_only_where_something_runs_in_them(config, expected):
    assert useful_workers(config, 3) == expected
    assert useful_workers(config, 1) == 1
    assert useful_workers(config, 3, stack_tasks=False) == 3


@pytest.mark.parametrize("algorithm", ["reptile", "fomaml"])
def test_a_stacked_meta_step_is_the_one_task_loops_step(algorithm):
    cfg = preset("sine", meta_batch=4, inner_lr=0.005, algorithm=algorithm, fomaml_tail_shots=5)
    results = {}
    for stack in (True, False):
        model = build_model(cfg, torch.Generator().manual_seed(4))
        learner = Learner.from_config(model, cfg)
        runner = StackedRunner(learner, cfg) if stack else SerialRunner(learner, cfg)
        plan = Compute(device="cpu", stack_tasks=stack).plan_training(cfg, model)
        assert plan.training == ("stacked" if stack else "serial")
        algorithm_ = MetaStep(learner, cfg, runner)
        rng = np.random.default_rng(7)
        sampler = SineTaskSampler(rng, cfg.train_shots + (5 if algorithm == "fomaml" else 0))
        k = cfg.train_shots

        def sample(sampler=sampler, k=k):
            t = sampler.sample()
            return t.support_x[:k], t.support_y[:k], t.support_x[k:], t.support_y[k:]

        metrics = [algorithm_(sample, 0.5, rng) for _ in range(3)]
        results[stack] = ([p.detach().clone() for p in model.parameters()], metrics, rng.random())
    (stacked, stacked_metrics, stacked_draw), (loop, loop_metrics, loop_draw) = (
        results[True],
        results[False],
    )
    assert stacked_draw == loop_draw  # the same random numbers were consumed
    for a, b in zip(stacked, loop, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(stacked_metrics, loop_metrics, strict=True):
        assert a.keys() == b.keys() == {"inner_loss"}
        assert a["inner_loss"] == pytest.approx(b["inner_loss"], rel=1e-5)
    initial = build_model(cfg, torch.Generator().manual_seed(4))
    assert not torch.equal(stacked[0], next(initial.parameters()))  # the steps moved it


def test_a_stacked_sine_run_is_reproducible_and_resumes_exactly(tmp_path):
    cfg = preset(
        "sine",
        meta_iters=8,
        meta_batch=3,
        checkpoint_interval=2,
        validation_interval=4,
        validation_tasks=5,
    )

    class StopAfter(Reporter):
        iterations = 0

        def on_iteration(self, iteration, metrics):
            self.iterations = iteration

        def should_stop(self) -> bool:
            return self.iterations >= 5

    cpu = Compute(device="cpu")
    train(cfg, tmp_path / "a", compute=cpu)
    train(cfg, tmp_path / "b", compute=cpu)
    assert train(cfg, tmp_path / "c", compute=cpu, reporter=StopAfter()).stopped
    train(cfg, tmp_path / "c", compute=cpu)
    weights = [load_file(str(tmp_path / n / "initialization.safetensors")) for n in "abc"]
    for other in weights[1:]:
        assert weights[0].keys() == other.keys()
        assert all(torch.equal(weights[0][k], other[k]) for k in weights[0])
