"""Compute: the five settings of where and how a run computes, the plan they make for a run, and
the keyword arguments train and evaluate took before it (still accepted, deprecated)."""

from __future__ import annotations

import pytest
import torch

from metatrain import Compute, evaluate, preset, train
from metatrain.engine.compute import compute_from, resolve_workers, useful_workers
from metatrain.models import build_model
from tests.metatrain.synthetic import tiny_config


def test_the_defaults_are_one_process_on_the_default_device():
    compute = Compute()
    assert (compute.device, compute.workers) == (None, 1)
    assert compute.cuda_graphs and compute.stack_tasks and not compute.tf32
    assert Compute(device=torch.device("cpu")).device == "cpu"  # a torch.device is accepted
    assert Compute(workers=None).workers == "auto"


@pytest.mark.parametrize("workers", [0, -1, "many", True, 2.5])
def test_workers_must_be_auto_or_a_positive_count(workers):
    with pytest.raises(ValueError, match="workers"):
        Compute(workers=workers)


def test_asking_for_cuda_without_it_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        Compute(device="cuda").resolve_device()


def test_task_workers_are_the_useful_ones_for_the_config():
    cpu = torch.device("cpu")
    for config in (preset("omniglot-5way-1shot"), preset("sine"), preset("sine", meta_batch=4)):
        for workers in (1, 3, "auto"):
            compute = Compute(device="cpu", workers=workers)
            expected = useful_workers(config, resolve_workers(workers, cpu))
            assert compute.task_workers(config) == expected
    assert Compute(device="cpu", workers=3).task_workers(preset("sine")) == 1  # stacked instead


def _plan(config, **compute):
    model = build_model(config)
    return Compute(device="cpu", **compute).plan_training(config, model)


def test_the_plan_of_a_training_run(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    chained = _plan(preset("omniglot-5way-1shot"), workers=2)
    assert (chained.workers, chained.training, chained.evaluation) == (2, "serial", "pool")
    assert chained.helper_thread  # a spare core for the serial steps
    assert not _plan(preset("omniglot-5way-1shot"), workers=1).helper_thread
    no_validation = _plan(preset("omniglot-5way-1shot", validation_interval=0), workers=2)
    assert (no_validation.workers, no_validation.evaluation) == (1, "serial")
    fresh = _plan(preset("omniglot-5way-1shot", keep_adam_state=False), workers=2)
    assert (fresh.training, fresh.evaluation, fresh.helper_thread) == ("pool", "pool", False)
    sine = _plan(preset("sine", meta_batch=4), workers=2)
    assert (sine.workers, sine.training, sine.evaluation) == (1, "stacked", "stacked")
    one_task = _plan(preset("sine"), workers=2)  # a stack of one task rounds differently
    assert (one_task.training, one_task.evaluation) == ("serial", "stacked")
    unstacked = _plan(preset("sine", meta_batch=4), workers=2, stack_tasks=False)
    assert (unstacked.workers, unstacked.training, unstacked.evaluation) == (2, "pool", "pool")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # more threads are the caller's
    assert not _plan(preset("omniglot-5way-1shot"), workers=2).helper_thread


def test_the_plan_of_an_evaluation_starts_no_more_workers_than_tasks():
    config = tiny_config()
    model = build_model(config)
    plan = Compute(device="cpu", workers=8).plan_evaluation(config, model, tasks=3)
    assert (plan.workers, plan.evaluation) == (3, "pool")
    plan = Compute(device="cpu", workers=8).plan_evaluation(config, model, tasks=1)
    assert (plan.workers, plan.evaluation) == (1, "serial")
    sine = preset("sine")
    plan = Compute(device="cpu", workers=8).plan_evaluation(sine, build_model(sine), tasks=50)
    assert (plan.workers, plan.evaluation) == (1, "stacked")


def test_the_old_keyword_arguments_make_a_compute_and_warn():
    with pytest.warns(DeprecationWarning, match=r"compute=metatrain.Compute\(device=\.\.\."):
        compute = compute_from(None, {"device": "cpu", "workers": 2, "tf32": True}, "train")
    assert compute == Compute(device="cpu", workers=2, tf32=True)
    assert compute_from(None, {}, "train") == Compute()
    given = Compute(device="cpu")
    assert compute_from(given, {}, "train") is given
    with pytest.raises(TypeError, match="not both"):
        compute_from(given, {"workers": 2}, "train")
    with pytest.raises(TypeError, match="unexpected keyword argument 'threads'"):
        compute_from(None, {"threads": 2}, "evaluate")
    with pytest.raises(TypeError, match="must be a metatrain.Compute"):
        compute_from("cpu", {}, "train")  # type: ignore[arg-type]


def test_train_and_evaluate_still_take_the_old_keyword_arguments(tmp_path):
    config = preset("sine", meta_iters=2, validation_interval=0, final_eval_tasks=3)
    with pytest.warns(DeprecationWarning):
        result = train(config, tmp_path, device="cpu", stack_tasks=False)
    assert result.iterations_done == 2
    with pytest.warns(DeprecationWarning):
        old = evaluate(tmp_path, device="cpu", workers=1)
    new = evaluate(tmp_path, compute=Compute(device="cpu", workers=1))
    assert (old.loss_after, old.tasks) == (new.loss_after, new.tasks)
