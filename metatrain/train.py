"""The meta-training loop: resumable, reproducible, reporting through a Reporter.

``train(config, out_dir)`` writes into ``out_dir``:

- ``config.json`` at the start (and again with the weights at the end);
- ``metrics.jsonl``: one JSON object per meta-iteration (``iteration``, ``inner_loss``,
  ``inner_accuracy``, ``meta_step_size``, ``seconds``) and one per validation
  (``iteration``, ``validation``: an EvalResult dict);
- ``checkpoint.pt`` every ``checkpoint_interval`` meta-iterations, at the end, and when a stop
  is requested;
- ``initialization.safetensors`` when training has finished.

If ``out_dir`` already holds a checkpoint of the same config (same hash) training continues
from it: weights, Adam state and the task generator's state are restored, metric lines after
the checkpoint are dropped, and on CPU the final weights are bit-identical to an uninterrupted
run. A checkpoint of a different config is an error rather than being overwritten.

Periodic validation runs on the validation classes, or, when there are none (the paper's
setting: all 1,200 training characters are used for training), on the test classes, as the
paper's code monitors test accuracy during training; ``EvalResult.split`` says which. Its tasks
depend only on (seed, split), so every validation uses the same tasks and the curve is not
noisy from task sampling. The final test evaluation is ``evaluate(out_dir)`` (run by the CLI
or the dashboard after training), which uses ``final_eval_tasks`` and the checkpoint's Adam
state, as the paper's code evaluates in the training session.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from . import seeding
from .algorithms import TaskTensors, algorithm_of, meta_step_size
from .checkpoint import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    atomic_write,
    load_checkpoint,
    save_checkpoint,
    save_initialization,
    write_config,
)
from .config import Config, validate_against_data
from .data import SineTaskSampler, TaskSampler, load_class_splits
from .engine.compute import Compute, compute_from
from .engine.device import float32_precision, one_thread, prepare_model, to_device
from .engine.learner import Learner
from .engine.meta_step import MetaStep
from .engine.pool import TaskPool
from .engine.runners import make_runner
from .evaluate import run_evaluation, task_source
from .models import build_model
from .reporting import Heartbeat, Reporter
from .results import EvalResult, TrainResult

__all__ = ["TrainResult", "train", "CheckpointMismatchError"]

# Seconds between reporter.heartbeat() calls (the contract promises at most 2 s).
HEARTBEAT_INTERVAL = 1.0


class CheckpointMismatchError(ValueError):
    """``out_dir`` holds a checkpoint of a different config; refusing to overwrite it."""


def _truncate_metrics(path: Path, keep_through: int) -> None:
    """Drop metric lines after iteration ``keep_through`` (and any torn last line)."""
    if not path.exists():
        return
    kept: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and int(record.get("iteration", 0)) <= keep_through:
                kept.append(line if line.endswith("\n") else line + "\n")
    data = "".join(kept).encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def _training_tasks(
    config: Config,
    splits: Any,
    rng: Any,
    device: torch.device,
    channels_last: bool,
) -> Any:
    """A function returning one training task (support, labels, tail, tail labels) on device."""
    tail = algorithm_of(config).tail_shots(config)
    if not config.is_classification:
        # sine_version 2: the demo's evenly spaced x (shuffled, so a FOMAML tail is a random
        # subset of the grid); 1: uniform x, as runs made before it
        grid = config.sine_version >= 2
        sampler = SineTaskSampler(rng, config.train_shots + tail, grid=grid)
        k = config.train_shots

        def sample_sine() -> TaskTensors:
            t = sampler.sample()
            x, y = t.support_x.to(device), t.support_y.to(device)
            return x[:k], y[:k], x[k:], y[k:]

        return sample_sine
    sampler_c = TaskSampler(splits.train, config.ways, config.train_shots, tail, rng)

    def sample() -> TaskTensors:
        t = sampler_c.sample()
        return (
            to_device(t.support_x, device, channels_last),
            t.support_y.to(device, non_blocking=True),
            to_device(t.query_x, device, channels_last),
            t.query_y.to(device, non_blocking=True),
        )

    return sample


def _validation_split(config: Config, splits: Any) -> str:
    if not config.is_classification:
        return "validation"
    val = splits.validation
    if val is not None and val.num_classes >= config.ways:
        return "validation"
    return "test"


def train(
    config: Config | Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    reporter: Reporter | None = None,
    compute: Compute | None = None,
    **legacy: Any,
) -> TrainResult:
    """Meta-train per ``config`` into ``out_dir`` (resuming if it holds a checkpoint).

    ``compute``: where and how (``metatrain.Compute``; default the CPU or CUDA if available,
    one process), never what: task workers run independent tasks side by side on the CPU with
    the same results (validation tasks always, a meta-batch's training tasks only when each
    starts from a fresh inner optimizer, not with ``keep_adam_state``, the paper's setting);
    serial tasks use a spare core for a helper thread; a regression MLP with SGD adapts a
    meta-batch's tasks many at once (the same up to rounding). ``legacy``: ``device=``,
    ``workers=``, ``cuda_graphs=``, ``stack_tasks=``, ``tf32=`` as before ``Compute``
    (deprecated).
    """
    compute = compute_from(compute, legacy, "train")
    if not isinstance(config, Config):
        config = Config.from_dict(config)
    reporter = reporter or Reporter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    splits = None
    if config.is_classification:
        splits = load_class_splits(config)
        validate_against_data(config, splits)

    ckpt_path = out / CHECKPOINT_FILE
    ckpt = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if ckpt is not None and not config.hash_matches(ckpt["config_hash"]):
        raise CheckpointMismatchError(
            f"{ckpt_path} belongs to a different config (hash {ckpt['config_hash'][:12]}, "
            f"this config {config.config_hash()[:12]}); use a new out_dir"
        )
    write_config(config, out)

    torch_gen = seeding.init_generator(config.seed)
    model = build_model(config, generator=torch_gen)
    plan = compute.plan_training(config, model)
    dev = plan.device
    channels_last = prepare_model(model, dev)
    learner = Learner.from_config(
        model, config, cuda_graphs=plan.cuda_graphs, helper_thread=plan.helper_thread
    )
    rng = seeding.train_rng(config.seed)
    start = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"], strict=True)
        learner.load_optimizer_state(ckpt["optimizer"])
        seeding.set_numpy_state(rng, ckpt["numpy_rng"])
        if ckpt["torch_rng"].numel():
            torch_gen.set_state(ckpt["torch_rng"])
        start = int(ckpt["iteration"])
    sample_task = _training_tasks(config, splits, rng, dev, channels_last)
    val_split = _validation_split(config, splits)

    metrics_path = out / METRICS_FILE
    _truncate_metrics(metrics_path, start)
    total = config.meta_iters
    heartbeat = Heartbeat(reporter, HEARTBEAT_INTERVAL)

    def checkpoint(iteration: int) -> bool:
        """Write a checkpoint unless the reporter cannot yet vouch for everything up to it."""
        if not reporter.before_checkpoint(iteration):
            return False
        save_checkpoint(
            ckpt_path,
            iteration=iteration,
            config=config,
            model=model,
            optimizer=learner.optimizer,
            numpy_rng_state=seeding.numpy_state(rng),
            torch_rng_state=torch_gen.get_state(),
        )
        reporter.on_checkpoint(iteration, str(ckpt_path))
        return True

    pool: TaskPool | None = None

    def validate() -> EvalResult:
        vrng = seeding.eval_rng(config.seed, val_split)
        source = task_source(config, val_split, vrng, dev, channels_last, splits)
        return run_evaluation(
            learner,
            config,
            source,
            config.validation_tasks,
            vrng,
            validation_runner,
            split=val_split,
            transductive=config.transductive,
            reporter=reporter,
            heartbeat=heartbeat,
            optimizer_state="training",
        )

    # With a helper thread, this thread drops to one torch thread meanwhile.
    threaded = learner.step_kind == "helper_thread"
    try:
        if plan.workers > 1:
            pool = TaskPool(model, config, plan.workers)
        meta_step = MetaStep(learner, config, make_runner(plan.training, learner, config, pool))
        validation_runner = make_runner(plan.evaluation, learner, config, pool)
        reporter.on_start(
            {
                "start_iteration": start,
                "total_iterations": total,
                "device": str(dev),
                "task_workers": plan.workers,
                "cuda_graphs": learner.step_kind == "cuda_graph",
                "parallel_training_tasks": plan.training == "pool",
                "threaded_backward": threaded,
                "inner_step": learner.step_kind,
                "tf32": plan.tf32 and dev.type == "cuda",
                "config": config.to_dict(),
            }
        )
        iteration = start
        last_checkpoint = start
        stopped = False
        with (
            open(metrics_path, "a", encoding="utf-8") as metrics_file,
            one_thread() if threaded else contextlib.nullcontext(),
            float32_precision(dev, plan.tf32),
        ):
            while iteration < total:
                if reporter.should_stop():
                    stopped = True
                    break
                iteration += 1
                t0 = time.perf_counter()
                step_size = meta_step_size(config, iteration)
                metrics: dict[str, float] = meta_step(
                    sample_task, step_size, rng, tick=heartbeat.beat
                )
                metrics["meta_step_size"] = step_size
                metrics["seconds"] = time.perf_counter() - t0
                metrics_file.write(json.dumps({"iteration": iteration, **metrics}) + "\n")
                metrics_file.flush()
                reporter.on_iteration(iteration, metrics)

                if config.validation_interval and iteration % config.validation_interval == 0:
                    validation = validate()
                    if validation.stopped:
                        stopped = True
                        break
                    record = {"iteration": iteration, "validation": validation.to_dict()}
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                    reporter.on_validation(iteration, validation)

                if (
                    iteration % config.checkpoint_interval == 0 or iteration == total
                ) and checkpoint(iteration):
                    last_checkpoint = iteration
                heartbeat.beat()

        if stopped:
            if last_checkpoint != iteration:
                checkpoint(iteration)
        else:
            save_initialization(model, config, out)
    finally:
        learner.close()
        if pool is not None:
            pool.close()
    result = TrainResult(
        iterations_done=iteration, total_iterations=total, stopped=stopped, out_dir=str(out)
    )
    reporter.on_end(result)
    return result
