"""Few-shot evaluation, as the paper's ``Reptile.evaluate``, with 95 % confidence intervals.

Per task: sample N classes with ``shots`` support and ``queries`` query examples each; starting
from the meta-weights, take ``eval_inner_iters`` steps on mini-batches of ``eval_inner_batch``
support examples; classify the queries; restore the meta-weights (and the optimizer state).

- transductive: all queries in one batch, so batch norm normalises them together;
- non-transductive: each query is classified alone, in one batch with the support set (batch
  norm always uses batch statistics, so the support set is what the query is normalised
  against), reading the query's row. Several of those batches share one forward pass, each
  normalised with its own statistics, which gives the same outputs as the paper's loop.

Optimizer state (the paper's code restores all variables, Adam's moments included, after each
evaluation task): with ``keep_adam_state`` every task starts from the state the evaluation
started with: the training run's Adam moments when evaluating a run folder that has a
checkpoint (as the paper's code, which evaluates in the training session), fresh otherwise.
Without ``keep_adam_state`` every task starts from a fresh optimizer.

Sine regression reports the mean squared error on the task's dense grid before and after
adaptation; ``accuracy`` is None and ``ci95`` is the interval of ``loss_after``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from . import seeding
from .algorithms import Learner
from .checkpoint import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    INITIALIZATION_FILE,
    load_checkpoint,
    read_config,
    read_document,
)
from .config import Config, ConfigError, validate_against_data
from .data import SineTaskSampler, TaskSampler, batch_order, load_class_splits
from .models import build_from_architecture
from .parallel import TaskPool, resolve_workers
from .reporting import Heartbeat, Reporter
from .runtime import float32_precision, prepare_model, resolve_device, to_device
from .stacked import evaluate_regression_tasks, stacks_tasks
from .stats import CI_METHOD, mean_ci95

__all__ = [
    "EvalResult",
    "evaluate",
    "evaluate_task",
    "run_evaluation",
    "stacks_tasks",
    "SPLITS",
]

SPLITS = ("train", "validation", "test")
# Regression tasks adapted together by metatrain.stacked (about 50 ms for the sine MLP).
_STACKED_TASKS = 100
# Non-transductive evaluation: images per grouped forward pass (see _predict_each).
_MAX_IMAGES_PER_PASS_CPU = 128
_MAX_IMAGES_PER_PASS_GPU = 8192


@dataclass
class EvalResult:
    """The outcome of an evaluation over ``tasks`` tasks.

    ``accuracy``: mean over tasks of the fraction of queries classified correctly (0..1);
    ``ci95``: half-width of its 95 % confidence interval (``ci_method`` says how), None with
    fewer than two tasks. Sine: ``accuracy`` None, ``loss_before``/``loss_after`` the mean
    squared errors, ``ci95`` for ``loss_after``. ``stopped``: a stop request cut the evaluation
    short (``tasks`` counts the tasks done). ``inner_optimizer_state``: what each task's inner
    optimizer started from: "training" (the training run's Adam moments, live during
    validation or from checkpoint.pt), "fresh", or "stateless" (SGD).
    """

    accuracy: float | None
    ci95: float | None
    tasks: int
    ways: int | None
    shots: int
    queries: int | None
    transductive: bool
    split: str
    ci_method: str
    loss_before: float | None = None
    loss_after: float | None = None
    stopped: bool = False
    inner_optimizer_state: str = "fresh"
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_PER_EXAMPLE = (nn.Conv2d, nn.Linear, nn.ReLU, nn.Tanh, nn.MaxPool2d, nn.Flatten)


def _grouped_forward(model: nn.Sequential, x: torch.Tensor, groups: int) -> torch.Tensor:
    """``model`` on ``groups`` independent batches interleaved along dim 0, in one pass.

    Row ``j * groups + g`` is example j of batch g. Every layer but batch norm acts on each
    example alone, so it runs on the whole stack. For batch norm the stack is viewed as
    (examples, groups * channels, H, W): each (group, channel) pair becomes its own channel,
    so the native kernel normalises every batch with its own statistics, exactly as if it
    had been forwarded alone.
    """
    for module in model:
        if isinstance(module, nn.BatchNorm2d):
            n, c, h, w = x.shape
            y = x.reshape(n // groups, groups * c, h, w)
            y = F.batch_norm(
                y,
                None,
                None,
                module.weight.repeat(groups),
                module.bias.repeat(groups),
                True,
                0.0,
                module.eps,
            )
            x = y.reshape(n, c, h, w)
        else:
            x = module(x)
    return x


def _predict_each(model: nn.Module, support_x: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
    """Outputs for each query forwarded alone with the whole support set in one batch.

    The paper's code runs one forward pass per query. For the paper's networks several
    queries share one pass (``_grouped_forward``), which gives the same outputs; the number
    per pass is capped (small on CPU, where big stacks fall out of cache and gain nothing,
    large on GPU, where it saves kernel launches). Other networks use the loop.
    """
    simple = isinstance(model, nn.Sequential) and all(
        isinstance(m, (*_PER_EXAMPLE, nn.BatchNorm2d)) for m in model
    )
    if not simple:
        return torch.stack([model(torch.cat([support_x, q[None]]))[-1] for q in query_x])
    s = support_x.shape[0]
    cap = _MAX_IMAGES_PER_PASS_GPU if support_x.is_cuda else _MAX_IMAGES_PER_PASS_CPU
    chunk = max(1, cap // (s + 1))
    outs = []
    for start in range(0, query_x.shape[0], chunk):
        q = query_x[start : start + chunk]
        g = q.shape[0]
        # (s + 1, g, C, H, W): example j of every group, then the queries as example s.
        stack = torch.cat(
            [support_x.unsqueeze(1).expand(s, g, *support_x.shape[1:]), q.unsqueeze(0)]
        )
        out = _grouped_forward(model, stack.reshape((s + 1) * g, *support_x.shape[1:]), g)
        outs.append(out.view(s + 1, g, -1)[-1])
    return torch.cat(outs)


def evaluate_task(
    learner: Learner,
    config: Config,
    task: Any,
    order: np.ndarray,
    transductive: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Adapt ``learner`` (at the meta-weights, its optimizer at the task's starting state) to
    one task on the mini-batches ``order``; (score, loss before adaptation or None).

    Classification: score = the fraction of queries classified correctly. Sine: score = the
    mean squared error on the query grid after adaptation, and the one before is returned too.
    Shared by the serial loop and the task workers of ``metatrain.parallel``.
    """
    model = learner.model
    support_x, support_y, query_x, query_y = task[:4]
    before = None
    if not learner.classification:
        with torch.no_grad():
            before = F.mse_loss(model(query_x), query_y)
    learner.adapt_order(support_x, support_y, order)
    with torch.no_grad():
        if not learner.classification:
            return F.mse_loss(model(query_x), query_y), before
        logits = model(query_x) if transductive else _predict_each(model, support_x, query_x)
        pred = logits[:, : config.ways].argmax(1)
        return (pred == query_y).float().mean(), None


def _task_order(config: Config, task: Any, rng: np.random.Generator) -> np.ndarray:
    return batch_order(len(task[0]), config.eval_inner_batch, config.eval_inner_iters, rng)


def run_evaluation(
    learner: Learner,
    config: Config,
    sample_task: Callable[[], Any],
    num_tasks: int,
    rng: np.random.Generator,
    *,
    split: str,
    transductive: bool,
    reporter: Reporter | None = None,
    heartbeat: Heartbeat | None = None,
    optimizer_state: str = "fresh",
    pool: TaskPool | None = None,
    stack_tasks: bool = True,
) -> EvalResult:
    """Evaluate ``learner``'s current weights on ``num_tasks`` tasks from ``sample_task``.

    ``sample_task()`` returns a task whose tensors are already on the learner's device.
    The learner's weights and optimizer state are exactly as before when this returns.
    With a ``pool`` the tasks run in its worker processes, with the same results.
    ``stack_tasks``: adapt regression MLPs' tasks many at once (``metatrain.stacked``; the
    pool is then unused); False runs them one at a time, as the paper's code does (the same
    up to rounding, which SGD can amplify on a few ill-conditioned tasks).
    """
    reporter = reporter or Reporter()
    heartbeat = heartbeat or Heartbeat(reporter)
    classification = learner.classification
    ways = config.ways
    t0 = time.perf_counter()
    theta = learner.copy_params()
    opt_snapshot = learner.optimizer_snapshot()
    scores: list[torch.Tensor] = []
    before: list[torch.Tensor] = []
    stopped = False
    if stack_tasks and stacks_tasks(learner):
        # Many tasks in one batched pass beat worker processes by far (metatrain.stacked).
        lr = learner.optimizer.param_groups[0]["lr"]
        while len(scores) < num_tasks and not stopped:
            chunk: list[Any] = []
            orders: list[np.ndarray] = []
            while len(chunk) < _STACKED_TASKS and len(scores) + len(chunk) < num_tasks:
                if reporter.should_stop():
                    stopped = True
                    break
                chunk.append(sample_task())
                orders.append(_task_order(config, chunk[-1], rng))
            if chunk:
                after, loss_before = evaluate_regression_tasks(
                    learner.model, theta, chunk, orders, lr, pad_to=_STACKED_TASKS
                )
                scores.extend(after.unbind())
                before.extend(loss_before.unbind())
                heartbeat.beat()
    elif pool is not None:
        pool.set_weights(theta)
        pool.set_optimizer_state(learner.optimizer.state_dict() if learner.keep_state else None)

        def jobs() -> Iterator[tuple[Any, np.ndarray]]:
            nonlocal stopped
            for _ in range(num_tasks):
                if reporter.should_stop():
                    stopped = True
                    return
                task = sample_task()
                yield task, _task_order(config, task, rng)

        for score, loss_before in pool.evaluate_tasks(jobs(), transductive):
            scores.append(score)
            if loss_before is not None:
                before.append(loss_before)
            heartbeat.beat()
    else:
        try:
            for _ in range(num_tasks):
                if reporter.should_stop():
                    stopped = True
                    break
                task = sample_task()
                order = _task_order(config, task, rng)
                learner.begin_task()
                score, loss_before = evaluate_task(learner, config, task, order, transductive)
                scores.append(score)
                if loss_before is not None:
                    before.append(loss_before)
                learner.load_params(theta)
                if learner.keep_state:
                    learner.optimizer_restore(opt_snapshot)
                heartbeat.beat()
        finally:
            learner.load_params(theta)
            learner.optimizer_restore(opt_snapshot)

    values = torch.stack(scores).tolist() if scores else []
    mean, ci = mean_ci95(values) if values else (float("nan"), None)
    if learner.optimizer_name == "sgd":
        optimizer_state = "stateless"
    elif not learner.keep_state:
        optimizer_state = "fresh"
    common = {
        "ci95": ci,
        "tasks": len(values),
        "transductive": transductive,
        "split": split,
        "ci_method": CI_METHOD,
        "stopped": stopped,
        "inner_optimizer_state": optimizer_state,
        "seconds": time.perf_counter() - t0,
    }
    if classification:
        return EvalResult(
            accuracy=mean if values else None,
            ways=ways,
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
        sampler = SineTaskSampler(rng, config.sine_points)
        return lambda: sampler.sample().to(device)
    if splits is None:
        splits = load_class_splits(config)
    dataset = getattr(splits, split)
    if dataset is None or dataset.num_classes == 0:
        raise ConfigError("split", f"the {split} split has no classes")
    sampler = TaskSampler(dataset, config.ways, config.shots, config.queries, rng)

    def sample() -> Any:
        t = sampler.sample()
        return type(t)(
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
    device: str | torch.device | None = None,
    workers: int | str | None = 1,
    cuda_graphs: bool = True,
    stack_tasks: bool = True,
    tf32: bool = False,
) -> EvalResult:
    """Evaluate a trained initialization on few-shot tasks of ``split``.

    ``run_dir_or_model``: a run folder (weights and Adam state from ``checkpoint.pt`` if
    present, else ``initialization.safetensors``), a ``.safetensors`` or ``checkpoint.pt``
    file next to its ``config.json``, or an ``nn.Module`` (then ``config`` is required; the
    module itself is not modified). Unspecified values come from the config; ``tasks``
    defaults to ``final_eval_tasks``. Tasks depend only on (seed, split): the same call gives
    the same tasks. ``ways`` may be smaller than the network's output size (the extra outputs
    are ignored when predicting). ``workers``: processes that evaluate tasks side by side on
    the CPU (``"auto"``: one per usable core; ignored on a GPU); the result is the same.
    ``cuda_graphs``: on a GPU, replay each inner step from a CUDA graph. ``stack_tasks``: see
    ``run_evaluation``. ``tf32``: on an NVIDIA GPU, let convolutions and matrix products use
    TF32 (``metatrain.runtime.float32_precision``; default IEEE float32, as on a CPU).
    """
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
    dev = resolve_device(device)
    channels_last = prepare_model(model, dev)
    learner = Learner.from_config(model, cfg, cuda_graphs=cuda_graphs)
    state_name = "fresh"
    if opt_state is not None and learner.keep_state:
        learner.load_optimizer_state(opt_state)
        state_name = "training"
    rng = seeding.eval_rng(cfg.seed, split)
    sample = task_source(cfg, split, rng, dev, channels_last, splits)
    count = min(resolve_workers(workers, dev), cfg.final_eval_tasks)
    if stack_tasks and stacks_tasks(learner):
        count = 1  # no use for task workers
    with contextlib.ExitStack() as stack:
        stack.enter_context(float32_precision(dev, tf32))
        pool = stack.enter_context(TaskPool(model, cfg, count)) if count > 1 else None
        return run_evaluation(
            learner,
            cfg,
            sample,
            cfg.final_eval_tasks,
            rng,
            split=split,
            transductive=cfg.transductive,
            reporter=reporter,
            optimizer_state=state_name,
            pool=pool,
            stack_tasks=stack_tasks,
        )
