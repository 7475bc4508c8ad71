"""Few-shot evaluation on tiny synthetic class data (no real dataset needed)."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch

from metatrain import Compute, Config, ConfigError, evaluate, preset
from metatrain.checkpoint import save_initialization
from metatrain.engine.learner import Learner
from metatrain.engine.runners import SerialRunner, StackedRunner
from metatrain.engine.tasks import predict_each as _predict_each
from metatrain.evaluate import run_evaluation, task_source
from metatrain.models import build_model
from metatrain.reporting import Heartbeat, Reporter
from metatrain.seeding import eval_rng
from tests.metatrain.synthetic import synthetic_splits

CPU = torch.device("cpu")
# metatrain.evaluate is shadowed by the function of the same name on the package.
evaluate_module = importlib.import_module("metatrain.evaluate")
tasks_module = importlib.import_module("metatrain.engine.tasks")


def _config(**changes) -> Config:
    base = {
        "image_size": 8,
        "ways": 3,
        "shots": 2,
        "queries": 2,
        "train_shots": 4,
        "eval_inner_batch": 6,
        "eval_inner_iters": 3,
        "final_eval_tasks": 6,
    }
    return Config.from_dict({**base, **changes})


def _learner(cfg: Config, seed: int = 0) -> Learner:
    return Learner.from_config(build_model(cfg, torch.Generator().manual_seed(seed)), cfg)


def _run(learner, cfg, tasks=6, transductive=True, seed=0, reporter=None, heartbeat=None):
    rng = eval_rng(seed, "test")
    source = task_source(cfg, "test", rng, CPU, False, synthetic_splits(seed=123))
    return run_evaluation(
        learner,
        cfg,
        source,
        tasks,
        rng,
        SerialRunner(learner, cfg),
        split="test",
        transductive=transductive,
        reporter=reporter,
        heartbeat=heartbeat,
    )


# --- predictions ------------------------------------------------------------------------


def _support_and_queries():
    g = torch.Generator().manual_seed(5)
    return torch.rand(6, 1, 8, 8, generator=g), torch.rand(4, 1, 8, 8, generator=g)


def test_non_transductive_prediction_equals_the_papers_loop_over_queries():
    model = build_model(_config(), torch.Generator().manual_seed(0))
    support, queries = _support_and_queries()
    with torch.no_grad():
        batched = _predict_each(model, support, queries)
        loop = torch.stack([model(torch.cat([support, q[None]]))[-1] for q in queries])
        transductive = model(queries)
    assert batched.shape == (4, 3)
    assert torch.allclose(batched, loop, atol=1e-5)
    assert not torch.allclose(batched, transductive, atol=1e-3)


def test_grouped_prediction_in_small_passes_and_the_fallback_loop_agree(monkeypatch):
    model = build_model(_config(), torch.Generator().manual_seed(0))
    support, queries = _support_and_queries()
    with torch.no_grad():
        one_pass = _predict_each(model, support, queries)
        monkeypatch.setattr(tasks_module, "_MAX_IMAGES_PER_PASS_CPU", 7)  # one query a pass
        per_query = _predict_each(model, support, queries)
        wrapped = torch.nn.Sequential(torch.nn.Sequential(*model))  # not a flat Sequential
        loop = _predict_each(wrapped, support, queries)
    assert torch.allclose(one_pass, per_query, atol=1e-5)
    assert torch.allclose(one_pass, loop, atol=1e-5)


def test_only_transductive_predictions_depend_on_the_other_queries():
    model = build_model(_config(), torch.Generator().manual_seed(0))
    support, queries = _support_and_queries()
    changed = queries.clone()
    changed[1:] = 1.0 - changed[1:]
    with torch.no_grad():
        alone_a = _predict_each(model, support, queries)[0]
        alone_b = _predict_each(model, support, changed)[0]
        together_a = model(queries)[0]
        together_b = model(changed)[0]
    assert torch.allclose(alone_a, alone_b, atol=1e-6)
    assert not torch.allclose(together_a, together_b, atol=1e-3)


# --- run_evaluation ---------------------------------------------------------------------


def test_result_fields_and_json():
    cfg = _config()
    result = _run(_learner(cfg), cfg, tasks=5, transductive=False)
    assert (result.tasks, result.ways, result.shots, result.queries) == (5, 3, 2, 2)
    assert result.split == "test" and result.transductive is False
    assert 0.0 <= result.accuracy <= 1.0 and result.ci95 is not None
    assert "1.96" in result.ci_method
    assert result.loss_before is None and result.stopped is False
    json.dumps(result.to_dict())


@pytest.mark.parametrize("keep", [True, False])
def test_evaluation_restores_weights_and_optimizer_state_exactly(keep):
    cfg = _config(keep_adam_state=keep)
    learner = _learner(cfg)
    splits = synthetic_splits(seed=123)
    task = task_source(cfg, "test", np.random.default_rng(9), CPU, False, splits)()
    learner.adapt_random(task.support_x, task.support_y, 6, 2, np.random.default_rng(0))  # state
    weights = [p.detach().clone() for p in learner.params]
    state = {p: {k: v.clone() for k, v in s.items()} for p, s in learner.optimizer.state.items()}
    _run(learner, cfg, tasks=3)
    assert all(torch.equal(a, b) for a, b in zip(weights, learner.params, strict=True))
    assert learner.optimizer.state.keys() == state.keys()
    for p, s in state.items():
        assert all(torch.equal(v, learner.optimizer.state[p][k]) for k, v in s.items())


@pytest.mark.parametrize("keep", [True, False])
def test_every_evaluation_task_starts_from_the_same_optimizer_state(keep, monkeypatch):
    cfg = _config(keep_adam_state=keep)
    learner = _learner(cfg)
    task = task_source(
        cfg, "test", np.random.default_rng(9), CPU, False, synthetic_splits(seed=123)
    )()
    learner.adapt_random(task.support_x, task.support_y, 6, 2, np.random.default_rng(0))
    seen = []
    adapt = learner.adapt

    def spy(*args, **kwargs):
        state = learner.optimizer.state.get(learner.params[0], {})
        seen.append(float(state["step"]) if "step" in state else None)
        return adapt(*args, **kwargs)

    monkeypatch.setattr(learner, "adapt", spy)
    _run(learner, cfg, tasks=3)
    # kept: the 2 steps taken before evaluation, for every task; else a fresh optimizer
    assert seen == ([2.0] * 3 if keep else [None] * 3)


def test_evaluation_is_reproducible_and_seeded_by_seed_and_split():
    cfg = _config()
    a = _run(_learner(cfg), cfg, tasks=4)
    b = _run(_learner(cfg), cfg, tasks=4)
    assert a.accuracy == b.accuracy and a.ci95 == b.ci95
    splits = synthetic_splits(seed=123)
    first = task_source(cfg, "test", eval_rng(0, "test"), CPU, False, splits)()
    again = task_source(cfg, "test", eval_rng(0, "test"), CPU, False, splits)()
    other_seed = task_source(cfg, "test", eval_rng(1, "test"), CPU, False, splits)()
    other_split = task_source(cfg, "test", eval_rng(0, "train"), CPU, False, splits)()
    assert torch.equal(first.support_x, again.support_x)
    assert not torch.equal(first.support_x, other_seed.support_x)
    assert not torch.equal(first.support_x, other_split.support_x)


class _StopAfter(Reporter):
    def __init__(self, polls: int) -> None:
        self.polls = polls
        self.calls = 0
        self.beats = 0

    def should_stop(self) -> bool:
        self.calls += 1
        return self.calls > self.polls

    def heartbeat(self) -> None:
        self.beats += 1


def test_a_stop_request_ends_evaluation_between_tasks():
    cfg = _config()
    reporter = _StopAfter(2)
    result = _run(_learner(cfg), cfg, tasks=10, reporter=reporter)
    assert result.stopped is True
    assert result.tasks == 2


def test_heartbeat_is_sent_during_evaluation():
    cfg = _config()
    reporter = _StopAfter(100)
    _run(_learner(cfg), cfg, tasks=4, reporter=reporter, heartbeat=Heartbeat(reporter, interval=0))
    assert reporter.beats == 4


def test_sine_evaluation_reports_losses_before_and_after():
    cfg = preset("sine", eval_inner_iters=32)
    learner = _learner(cfg)
    rng = eval_rng(0, "test")
    result = run_evaluation(
        learner,
        cfg,
        task_source(cfg, "test", rng, CPU, False),
        5,
        rng,
        StackedRunner(learner, cfg),  # a sine MLP with SGD: 100 tasks at a time
        split="test",
        transductive=True,
    )
    assert result.accuracy is None and result.ways is None
    assert result.shots == cfg.sine_points
    assert result.loss_before > 0 and result.loss_after > 0
    assert result.loss_after < result.loss_before  # 32 SGD steps on the task help
    assert result.inner_optimizer_state == "stateless"


# --- evaluate() -------------------------------------------------------------------------


@pytest.fixture
def fake_data(monkeypatch):
    splits = synthetic_splits(seed=123)
    monkeypatch.setattr(evaluate_module, "load_class_splits", lambda config: splits)
    return splits


def test_evaluate_a_saved_initialization_and_the_same_module_agree(fake_data, tmp_path):
    cfg = _config()
    model = build_model(cfg, torch.Generator().manual_seed(0))
    save_initialization(model, cfg, tmp_path)
    before = [p.detach().clone() for p in model.parameters()]
    from_folder = evaluate(tmp_path, tasks=4, compute=Compute(device="cpu"))
    from_module = evaluate(model, cfg, tasks=4, compute=Compute(device="cpu"))
    assert from_folder.accuracy == from_module.accuracy
    assert from_folder.tasks == 4 and from_folder.inner_optimizer_state == "fresh"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    non = evaluate(tmp_path, tasks=4, transductive=False, compute=Compute(device="cpu"))
    assert non.transductive is False


def test_evaluate_rejects_bad_requests(fake_data, tmp_path):
    cfg = _config()
    model = build_model(cfg, torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError) as info:
        evaluate(model, cfg, ways=4, tasks=1)  # the network has 3 outputs
    assert info.value.field == "ways"
    with pytest.raises(ConfigError) as info:
        evaluate(model, cfg, split="holdout")
    assert info.value.field == "split"
    with pytest.raises(ConfigError) as info:
        evaluate(model, cfg, split="validation", tasks=1)  # no validation classes
    assert info.value.field == "split"
    with pytest.raises(ValueError):
        evaluate(model)


def test_evaluate_with_fewer_ways_than_outputs_ignores_the_extra_outputs(fake_data):
    cfg = _config(ways=4)
    model = build_model(cfg, torch.Generator().manual_seed(0))
    result = evaluate(model, cfg, ways=3, tasks=2, compute=Compute(device="cpu"))
    assert result.ways == 3 and result.tasks == 2


@pytest.fixture
def adam_run(fake_data, tmp_path):
    """A run folder whose checkpoint holds Adam moments (a few steps' worth), as training
    leaves it."""
    from metatrain import reference, seeding
    from metatrain.checkpoint import CHECKPOINT_FILE, save_checkpoint

    config = _config()
    model = build_model(config, torch.Generator().manual_seed(0))
    optimizer = reference.inner_optimizer(model, config)
    x = fake_data.train.gather(np.array([0, 1, 2] * 2), np.array([0] * 3 + [1] * 3))
    y = torch.arange(3).repeat(2)
    for _ in range(3):
        reference.inner_step(model, optimizer, x, y, config)
    save_initialization(model, config, tmp_path)
    save_checkpoint(
        tmp_path / CHECKPOINT_FILE,
        iteration=config.meta_iters,
        config=config,
        model=model,
        optimizer=optimizer,
        numpy_rng_state=seeding.numpy_state(np.random.default_rng(0)),
    )
    return tmp_path


def test_fresh_optimizer_evaluates_the_initialization_alone(adam_run):
    cpu = Compute(device="cpu")
    training = evaluate(adam_run, tasks=12, compute=cpu)
    fresh = evaluate(adam_run, tasks=12, compute=cpu, fresh_optimizer=True)
    downloaded = evaluate(adam_run / "initialization.safetensors", tasks=12, compute=cpu)
    assert training.inner_optimizer_state == "training"
    assert fresh.inner_optimizer_state == downloaded.inner_optimizer_state == "fresh"
    assert fresh.accuracy == downloaded.accuracy
    assert fresh.accuracy != training.accuracy  # the training moments change adaptation


def test_the_evaluate_command_takes_fresh_optimizer(adam_run):
    import io

    from metatrain import cli

    results = {}
    for extra in ([], ["--fresh-optimizer"]):
        out, err = io.StringIO(), io.StringIO()
        argv = ["evaluate", str(adam_run), "--tasks", "12", "--device", "cpu", *extra]
        assert cli.main(argv, out=out, err=err) == 0, err.getvalue()
        results[bool(extra)] = json.loads(out.getvalue())
    assert results[False]["inner_optimizer_state"] == "training"
    assert results[True]["inner_optimizer_state"] == "fresh"
    fresh = evaluate(adam_run, tasks=12, compute=Compute(device="cpu"), fresh_optimizer=True)
    assert results[True]["accuracy"] == fresh.accuracy
