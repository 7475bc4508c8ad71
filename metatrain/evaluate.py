"""Few-shot evaluation, as the paper's ``Reptile.evaluate``, with 95 % confidence intervals.

Per task: sample N classes with ``shots`` support and ``queries`` query examples each; starting
from the meta-weights, take ``eval_inner_iters`` steps on mini-batches of ``eval_inner_batch``
support examples; classify the queries; restore the meta-weights (and the optimizer state).

- transductive: all queries in one batch, so batch norm normalises them together;
- non-transductive: each query is classified alone, in one batch with the support set (batch
  norm always uses batch statistics, so the support set is what the query is normalised
  against), reading the query's row. Several of those batches share one forward pass, each
  normalised with its own statistics, which gives the same outputs as the paper's loop
  (``metatrain.engine.tasks``; the task in plain form is ``metatrain.reference.evaluate_task``).

Optimizer state (the paper's code restores all variables, Adam's moments included, after each
evaluation task): with ``keep_adam_state`` every task starts from the state the evaluation
started with: the training run's Adam moments when evaluating a run folder that has a
checkpoint (as the paper's code, which evaluates in the training session), fresh otherwise,
or when asked (``fresh_optimizer``: what a user who has only ``initialization.safetensors``
gets). Without ``keep_adam_state`` every task starts from a fresh optimizer. The result's
``inner_optimizer_state`` says which: "training", "fresh" or "stateless" (SGD).

Sine regression reports the mean squared error on the task's dense grid before and after
adaptation; ``accuracy`` is None and ``ci95`` is the interval of ``loss_after``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from . import seeding
from .checkpoint import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    INITIALIZATION_FILE,
    load_checkpoint,
    read_config,
    read_document,
)
from .config import Config, ConfigError, validate_against_data
from .data import SineTaskSampler, Task, TaskSampler, batch_order, load_class_splits
from .engine.compute import Compute, compute_from
from .engine.device import float32_precision, prepare_model, to_device
from .engine.learner import Learner
from .engine.pool import TaskPool
from .engine.runners import TaskRunner, make_runner
from .models import build_from_architecture
from .reporting import Heartbeat, Reporter
from .results import EvalResult
from .stats import CI_METHOD, mean_ci95

__all__ = ["EvalResult", "evaluate", "run_evaluation", "task_source", "SPLITS"]

SPLITS = ("train", "validation", "test")


def run_evaluation(
    learner: Learner,
    config: Config,
    sample_task: Callable[[], Any],
    num_tasks: int,
    rng: np.random.Generator,
    runner: TaskRunner,
    *,
    split: str,
    transductive: bool,
    reporter: Reporter | None = None,
    heartbeat: Heartbeat | None = None,
    optimizer_state: str = "fresh",
) -> EvalResult:
    """Evaluate ``learner``'s current weights on ``num_tasks`` tasks from ``sample_task``,
    run by ``runner`` (``metatrain.engine.runners``: one at a time, in task workers or
    stacked, with the same results up to the stacked path's rounding).

    ``sample_task()`` returns a task whose tensors are already on the learner's device.
    The learner's weights and optimizer state are exactly as before when this returns.
    """
    reporter = reporter or Reporter()
    heartbeat = heartbeat or Heartbeat(reporter)
    t0 = time.perf_counter()
    theta = learner.copy_params()
    scores: list[torch.Tensor] = []
    before: list[torch.Tensor] = []
    stopped = False

    def jobs() -> Iterator[tuple[Any, np.ndarray]]:
        nonlocal stopped
        for _ in range(num_tasks):
            if reporter.should_stop():
                stopped = True
                return
            task = sample_task()
            order = batch_order(len(task[0]), config.eval_inner_batch, config.eval_inner_iters, rng)
            yield task, order

    for score, score_before in runner.evaluate(jobs(), theta, transductive):
        scores.append(score)
        if score_before is not None:
            before.append(score_before)
        heartbeat.beat()

    values = torch.stack(scores).tolist() if scores else []
    mean, ci = mean_ci95(values) if values else (float("nan"), None)
    if learner.optimizer_name == "sgd":
        optimizer_state = "stateless"
    elif not learner.keep_state:
        optimizer_state = "fresh"
    common: dict[str, Any] = {
        "ci95": ci,
        "tasks": len(values),
        "transductive": transductive,
        "split": split,
        "ci_method": CI_METHOD,
        "stopped": stopped,
        "inner_optimizer_state": optimizer_state,
        "seconds": time.perf_counter() - t0,
    }
    if learner.classification:
        return EvalResult(
            accuracy=mean if values else None,
            ways=config.ways,
            shots=config.shots,
            queries=config.queries,
            **common,
        )
    loss_before = float(torch.stack(before).mean()) if before else None
    return EvalResult(
        accuracy=None,
        ways=None,
        shots=config.sine_points,
        queries=None,
        loss_before=loss_before,
        loss_after=mean if values else None,
        **common,
    )


def task_source(
    config: Config,
    split: str,
    rng: np.random.Generator,
    device: torch.device,
    channels_last: bool,
    splits: Any = None,
) -> Callable[[], Any]:
    """A function returning evaluation tasks of ``split`` on ``device``."""
    if not config.is_classification:
        sine = SineTaskSampler(rng, config.sine_points)
        return lambda: sine.sample().to(device)
    if splits is None:
        splits = load_class_splits(config)
    dataset = getattr(splits, split)
    if dataset is None or dataset.num_classes == 0:
        raise ConfigError("split", f"the {split} split has no classes")
    sampler = TaskSampler(dataset, config.ways, config.shots, config.queries, rng)

    def sample() -> Task:
        t = sampler.sample()
        return Task(
            to_device(t.support_x, device, channels_last),
            t.support_y.to(device, non_blocking=True),
            to_device(t.query_x, device, channels_last),
            t.query_y.to(device, non_blocking=True),
        )

    return sample


def _resolve_source(
    source: str | os.PathLike[str] | nn.Module, config: Config | None
) -> tuple[nn.Module, Config, dict[str, Any] | None]:
    """(model, config, optimizer state dict or None) from a run folder, file or module."""
    if isinstance(source, nn.Module):
        if config is None:
            raise ValueError("evaluate(model) needs the model's config")
        return copy.deepcopy(source), config, None
    path = Path(source)
    folder = path if path.is_dir() else path.parent
    if config is None:
        config = read_config(folder / CONFIG_FILE)
    arch = read_document(folder / CONFIG_FILE)["architecture"]
    model = build_from_architecture(arch)
    ckpt_path = folder / CHECKPOINT_FILE
    use_ckpt = path.name == CHECKPOINT_FILE or (path.is_dir() and ckpt_path.is_file())
    if use_ckpt:
        ckpt = load_checkpoint(ckpt_path)
        model.load_state_dict(ckpt["model"], strict=True)
        return model, config, ckpt["optimizer"]
    weights = path if path.is_file() else folder / INITIALIZATION_FILE
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model, config, None


def _output_size(model: nn.Module) -> int | None:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else None


def evaluate(
    run_dir_or_model: str | os.PathLike[str] | nn.Module,
    config: Config | None = None,
    *,
    split: str = "test",
    tasks: int | None = None,
    ways: int | None = None,
    shots: int | None = None,
    queries: int | None = None,
    transductive: bool | None = None,
    seed: int | None = None,
    reporter: Reporter | None = None,
    compute: Compute | None = None,
    fresh_optimizer: bool = False,
    **legacy: Any,
) -> EvalResult:
    """Evaluate a trained initialization on few-shot tasks of ``split``.

    ``run_dir_or_model``: a run folder (weights and Adam state from ``checkpoint.pt`` if
    present, else ``initialization.safetensors``), a ``.safetensors`` or ``checkpoint.pt``
    file next to its ``config.json``, or an ``nn.Module`` (then ``config`` is required; the
    module itself is not modified). Unspecified values come from the config; ``tasks``
    defaults to ``final_eval_tasks``. ``fresh_optimizer``: every task starts a fresh Adam even
    where the checkpoint holds the training run's moments (the initialization alone, as a
    user who downloads it evaluates it). Tasks depend only on (seed, split): the same call gives
    the same tasks. ``ways`` may be smaller than the network's output size (the extra outputs
    are ignored when predicting). ``compute``: where and how (``metatrain.Compute``; default
    the CPU or CUDA if available, one process): task workers evaluate tasks side by side on
    the CPU with the same result; a regression MLP with SGD has its tasks adapted 100 at a
    time (``stack_tasks``, the same up to rounding). ``legacy``: ``device=``, ``workers=``,
    ``cuda_graphs=``, ``stack_tasks=``, ``tf32=`` as before ``Compute`` (deprecated).
    """
    compute = compute_from(compute, legacy, "evaluate")
    if split not in SPLITS:
        raise ConfigError("split", f"must be one of {', '.join(SPLITS)}; got {split!r}")
    model, base_config, opt_state = _resolve_source(run_dir_or_model, config)
    changes = {
        k: v
        for k, v in {
            "ways": ways,
            "shots": shots,
            "queries": queries,
            "transductive": transductive,
            "seed": seed,
            "final_eval_tasks": tasks,
        }.items()
        if v is not None
    }
    cfg = base_config.replace(**changes) if changes else base_config
    outputs = _output_size(model)
    if cfg.is_classification and outputs is not None and cfg.ways > outputs:
        raise ConfigError("ways", f"the network has {outputs} outputs; got ways={cfg.ways}")
    splits = None
    if cfg.is_classification:
        splits = load_class_splits(cfg)
        validate_against_data(cfg, splits)
    plan = compute.plan_evaluation(cfg, model, cfg.final_eval_tasks)
    channels_last = prepare_model(model, plan.device)
    learner = Learner.from_config(model, cfg, cuda_graphs=plan.cuda_graphs)
    state_name = "fresh"
    if opt_state is not None and learner.keep_state and not fresh_optimizer:
        learner.load_optimizer_state(opt_state)
        state_name = "training"
    rng = seeding.eval_rng(cfg.seed, split)
    sample = task_source(cfg, split, rng, plan.device, channels_last, splits)
    with contextlib.ExitStack() as stack:
        stack.enter_context(float32_precision(plan.device, plan.tf32))
        pool = stack.enter_context(TaskPool(model, cfg, plan.workers)) if plan.workers > 1 else None
        return run_evaluation(
            learner,
            cfg,
            sample,
            cfg.final_eval_tasks,
            rng,
            make_runner(plan.evaluation, learner, cfg, pool),
            split=split,
            transductive=cfg.transductive,
            reporter=reporter,
            optimizer_state=state_name,
        )
