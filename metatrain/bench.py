"""``python -m metatrain bench``: the library against the plain loop, same work, same process.

What is compared (omniglot-5way-1shot, real Omniglot from ``$METATRAIN_DATA``):

- meta-training: (a) the library's real ``train()`` (metrics file, reporter calls and all), timed
  between two of its ``on_iteration`` callbacks, so model building, data loading, starting the
  task workers and the final checkpoint are outside the clock; (b) the plain loop,
  ``metatrain.reference.reptile_meta_step``: Reptile in the paper's plain form, one model and
  a ``torch.optim.Adam``, the meta-weights put back before each task, autograd's
  ``backward`` and the optimizer's ``step`` for every inner step. Both draw tasks from the
  same ``TaskSampler`` and mini-batches from ``mini_batches``, with the preset's
  hyperparameters. Twice: with the preset as the paper runs it (Adam's moments chained
  across tasks, which makes the tasks a strict sequence: the library runs them one after
  another), and with ``keep_adam_state=False``, where the library runs the meta-batch's
  tasks side by side in task worker processes (``metatrain.engine.pool``). The plain loop
  always starts each task from a fresh Adam, as a loop written the usual way does (the same
  arithmetic as the chained one).
- evaluation: (a) the library's ``evaluate()`` on a network, with task workers, timed from its
  first task after the warm-up ones to its return; (b) ``metatrain.reference.evaluate_task``
  (fresh Adam, 50 steps of batch 5, the transductive queries).
- sine evaluation (the ``sine`` preset, no data needed): ``evaluate()``, which adapts 100 tasks
  at once (``metatrain.engine.stacked``), against ``reference.evaluate_task`` (SGD, 32 steps
  of batch 10, the query grid's loss).

Both sides are warmed up first, then timed in alternating rounds (A B, B A, ...) so that load
from other processes falls on both alike. The tests hold the library to the same reference
(``tests/metatrain/test_reference.py``), so the ratio compares equal work.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from . import reference, seeding
from .config import Config, preset
from .data import SineTaskSampler, TaskSampler, load_class_splits, omniglot_available
from .engine.compute import Compute
from .engine.device import float32_precision, usable_cores
from .models import build_model
from .reporting import Reporter

__all__ = [
    "PRESET",
    "bench_config",
    "cpu_times",
    "steal_share",
    "machine_info",
    "workload_info",
    "run_bench",
    "format_report",
]

PRESET = "omniglot-5way-1shot"
SINE_PRESET = "sine"
TRAIN_WARMUP = 2  # meta-iterations run before the clock starts (first Adam step allocates)
EVAL_WARMUP = 2  # evaluation tasks run before the clock starts
CALIBRATION = 3  # timed iterations / tasks used to size the default run
STEAL_NOTE = 0.05  # steal share from which the report warns that the host was contended


def bench_config(**overrides: Any) -> Config:
    """The preset with validation and periodic checkpoints off (they are not what is timed)."""
    return preset(PRESET, validation_interval=0, **overrides)


# --- machine --------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_times(stat: str | None = None) -> tuple[int, int] | None:
    """(steal, total) clock ticks of all CPUs since boot, from ``/proc/stat``'s first line (or
    ``stat``, that file's text); None where there is no such file (not Linux) or no steal
    column (kernels before 2.6.11).

    Steal is time a virtual machine's CPUs were ready to run but the hypervisor ran something
    else: on a shared cloud host it moves the figures by 10-20% from minute to minute, and
    neither the load average nor this process's CPU time shows it."""
    if stat is None:
        try:
            with open("/proc/stat", encoding="ascii") as f:
                stat = f.readline()
        except OSError:
            return None
    fields = stat.split("\n", 1)[0].split()
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    try:
        # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
        # already counted in user and nice.
        ticks = [int(v) for v in fields[1:9]]
    except ValueError:
        return None
    return ticks[7], sum(ticks)


def steal_share(start: tuple[int, int] | None, end: tuple[int, int] | None) -> float | None:
    """The share of all CPU time between two ``cpu_times`` readings that the hypervisor
    took (steal), or None where either reading is missing or no time passed."""
    if start is None or end is None or end[1] <= start[1]:
        return None
    return round((end[0] - start[0]) / (end[1] - start[1]), 4)


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on (they mean little without it)."""
    usable = usable_cores()
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": _load(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# --- timing ---------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _now() -> tuple[float, float]:
    """(wall clock, CPU time of this process): CPU time shows the work done even when other
    processes take the cores (with one thread it is close to what an idle machine would
    take; with more, it also counts threads spinning while they wait for each other)."""
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _now()
    return wall - start[0], cpu - start[1]


class _TrainClock(Reporter):
    """Timestamps ``on_iteration``: the clock runs from iteration ``start`` to the last."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.t0: tuple[float, float] | None = None
        self.t1: tuple[float, float] | None = None
        self.info: dict[str, Any] = {}

    def on_start(self, info: dict[str, Any]) -> None:
        self.info = info

    def on_iteration(self, iteration: int, metrics: dict[str, float]) -> None:
        now = _now()  # the loop has synchronised already (float(loss))
        if iteration == self.start:
            self.t0 = now
        self.t1 = now


class _EvalClock(Reporter):
    """``should_stop`` is polled before every task: start the clock before task ``start + 1``."""

    def __init__(self, start: int, device: torch.device) -> None:
        self.start = start
        self.device = device
        self.polls = 0
        self.t0: tuple[float, float] | None = None

    def should_stop(self) -> bool:
        self.polls += 1
        if self.polls == self.start + 1:
            _sync(self.device)
            self.t0 = _now()
        return False


Seconds = tuple[float, float]  # (wall, cpu)


def _library_train(
    config: Config,
    n: int,
    compute: Compute,
    started: dict[str, Any] | None = None,
) -> Seconds:
    """Seconds the real ``train()`` takes for ``n`` meta-iterations after TRAIN_WARMUP (the
    task workers start before the first of those, outside the clock). ``started`` is given
    what ``train()`` told its reporter's ``on_start``."""
    from .train import train

    total = TRAIN_WARMUP + n
    cfg = config.replace(meta_iters=total, checkpoint_interval=total + 1)
    clock = _TrainClock(TRAIN_WARMUP)
    with tempfile.TemporaryDirectory(prefix="metatrain-bench-") as out:
        train(cfg, out, reporter=clock, compute=compute)
    if started is not None:
        started.update(clock.info)
    assert clock.t0 is not None and clock.t1 is not None
    return clock.t1[0] - clock.t0[0], clock.t1[1] - clock.t0[1]


def _plain(config: Config) -> Config:
    """The plain loop's config: each task from a fresh inner optimizer."""
    return config.replace(keep_adam_state=False)


class _PlainTrainer:
    """The plain loop's state across rounds: one model and optimizer, one task stream."""

    def __init__(self, config: Config, splits: Any, device: torch.device) -> None:
        self.config = _plain(config)
        self.device = device
        self.model = build_model(config, generator=seeding.init_generator(config.seed)).to(device)
        self.optimizer = reference.inner_optimizer(self.model, self.config)
        self.rng = seeding.train_rng(config.seed)
        sampler = TaskSampler(splits.train, config.ways, config.train_shots, 0, self.rng)
        self.sample: Callable[[], Any] = lambda: sampler.sample().to(device)
        self.iteration = 0

    def run(self, n: int) -> Seconds:
        _sync(self.device)
        t0 = _now()
        for _ in range(n):
            self.iteration += 1
            frac = (self.iteration - 1) / self.config.meta_iters
            step = frac * self.config.meta_step_final + (1 - frac) * self.config.meta_step
            reference.reptile_meta_step(
                self.model, self.optimizer, self.sample, self.config, step, self.rng
            )
        _sync(self.device)
        return _since(t0)


def _library_eval(model: nn.Module, config: Config, n: int, compute: Compute) -> Seconds:
    """Seconds ``evaluate()`` takes for ``n`` tasks after EVAL_WARMUP (with task workers the
    clock starts when the task after the warm-up ones is handed out)."""
    from .evaluate import evaluate

    device = compute.resolve_device()
    clock = _EvalClock(EVAL_WARMUP, device)
    evaluate(model, config, tasks=EVAL_WARMUP + n, reporter=clock, compute=compute)
    _sync(device)
    assert clock.t0 is not None
    return _since(clock.t0)


class _PlainEvaluator:
    """The plain loop's evaluation, ``reference.evaluate_task``, on test tasks drawn as
    ``evaluate()`` draws them (its test-split random stream); ``make_sampler(rng)`` returns
    the task sampler."""

    def __init__(
        self,
        model: nn.Module,
        config: Config,
        make_sampler: Callable[[np.random.Generator], Any],
        device: torch.device,
    ):
        self.model = model
        self.config = _plain(config)
        self.optimizer = reference.inner_optimizer(model, self.config)
        self.device = device
        self.rng = seeding.eval_rng(config.seed, "test")
        sampler = make_sampler(self.rng)
        self.sample: Callable[[], Any] = lambda: sampler.sample().to(device)

    def run(self, n: int) -> Seconds:
        _sync(self.device)
        t0 = _now()
        for _ in range(n):
            reference.evaluate_task(
                self.model, self.optimizer, self.sample(), self.config, self.rng
            )
        _sync(self.device)
        return _since(t0)


def _split(total: int, rounds: int) -> list[int]:
    rounds = max(1, min(rounds, total))
    base, extra = divmod(total, rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]


def _compare(
    library: Callable[[int], Seconds],
    plain: Callable[[int], Seconds],
    total: int | None,
    seconds: float,
    rounds: int,
    log: Callable[[str], None],
    unit: str,
) -> dict[str, Any]:
    """Warm up (and, without ``total``, calibrate) both sides, then time alternating rounds.

    Rates are count / wall seconds; ``cpu_*`` the same per CPU second of this process.
    """
    rates = {}
    for name, fn in (("library", library), ("plain", plain)):
        wall, _ = fn(CALIBRATION)
        rates[name] = CALIBRATION / max(wall, 1e-9)
        log(f"  warm-up {name}: {rates[name]:.2f} {unit}/s")
    if total is None:
        total = max(rounds, math.ceil(seconds * min(rates.values())))
    sides: dict[str, dict[str, Any]] = {
        name: {"count": 0, "seconds": 0.0, "cpu_seconds": 0.0, "round_rates": []}
        for name in ("library", "plain")
    }
    ticks = cpu_times()
    for r, n in enumerate(_split(total, rounds)):
        order = [("library", library), ("plain", plain)]
        if r % 2:
            order.reverse()
        for name, fn in order:
            wall, cpu = fn(n)
            side = sides[name]
            side["count"] += n
            side["seconds"] += wall
            side["cpu_seconds"] += cpu
            side["round_rates"].append(round(n / max(wall, 1e-9), 3))
        log(
            f"  round {r + 1}: library {sides['library']['round_rates'][-1]:.2f}, "
            f"plain {sides['plain']['round_rates'][-1]:.2f} {unit}/s"
        )
    result: dict[str, Any] = {unit: total, "steal_share": steal_share(ticks, cpu_times())}
    for name, side in sides.items():
        side[f"{unit}_per_s"] = round(side["count"] / max(side["seconds"], 1e-9), 3)
        side[f"{unit}_per_cpu_s"] = round(side["count"] / max(side["cpu_seconds"], 1e-9), 3)
        side["seconds"] = round(side["seconds"], 3)
        side["cpu_seconds"] = round(side["cpu_seconds"], 3)
        result[name] = side
    lib, pl = sides["library"], sides["plain"]
    result["speedup"] = round(lib[f"{unit}_per_s"] / max(pl[f"{unit}_per_s"], 1e-9), 3)
    result["speedup_cpu"] = round(lib[f"{unit}_per_cpu_s"] / max(pl[f"{unit}_per_cpu_s"], 1e-9), 3)
    # Each round's ratio compares two runs minutes apart at most: on a host whose speed
    # drifts, their median moves less than the ratio of the totals.
    result["speedup_round_median"] = round(
        statistics.median(
            a / max(b, 1e-9) for a, b in zip(lib["round_rates"], pl["round_rates"], strict=True)
        ),
        3,
    )
    return result


def run_bench(
    *,
    iterations: int | None = None,
    eval_tasks: int | None = None,
    seconds: float = 20.0,
    rounds: int = 4,
    compute: Compute | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time training and evaluation, library vs plain loop; a JSON-ready dict.

    Three comparisons, each against the same plain loop (which always starts each task from a
    fresh Adam): ``train``, the preset as the paper runs it (Adam's moments chained across
    tasks, so the library runs its tasks one after another); ``train_fresh_adam``, the preset
    with ``keep_adam_state=False``, the plain loop's own arithmetic, where the library runs a
    meta-batch's tasks side by side on ``compute.workers`` processes (default: one per usable
    core); ``evaluate``, with those workers. The plain loop uses this process's torch threads
    (``--threads``).

    ``iterations``/``eval_tasks``: timed per side (None: as many as take about ``seconds``
    on the slower side, measured during the warm-up). Raises DataError without Omniglot.
    """
    compute = compute if compute is not None else Compute(workers="auto")
    dev = compute.resolve_device()
    count = compute.cores(dev)
    library = Compute(device=str(dev), workers=count, cuda_graphs=compute.cuda_graphs)
    # The plain loop too: on a GPU both sides then compute in IEEE float32, as train() does.
    with float32_precision(dev):
        return _run_comparisons(
            dev, library, iterations, eval_tasks, seconds, rounds, log or (lambda text: None)
        )


def _run_comparisons(
    dev: torch.device,
    library: Compute,
    iterations: int | None,
    eval_tasks: int | None,
    seconds: float,
    rounds: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    count = library.cores(dev)
    config = bench_config()
    machine = machine_info(dev)
    machine["library_workers"] = count
    if not omniglot_available(config.data_dir):
        load_class_splits(config)  # raises the DataError that says what is missing
    log(f"loading Omniglot ({PRESET}) ...")
    splits = load_class_splits(config)  # cached for train() and evaluate()

    log("meta-training, the preset (Adam state chained across tasks) (meta-iterations/s):")
    plain_trainer = _PlainTrainer(config, splits, dev)
    started: dict[str, Any] = {}
    train_result = _compare(
        lambda n: _library_train(config, n, library, started),
        plain_trainer.run,
        iterations,
        seconds,
        rounds,
        log,
        "iterations",
    )
    train_result["library_workers"] = 1
    train_result["threaded_backward"] = bool(started.get("threaded_backward"))

    fresh = config.replace(keep_adam_state=False)
    log(f"meta-training, fresh Adam per task, {count} task worker(s) (meta-iterations/s):")
    fresh_result = _compare(
        lambda n: _library_train(fresh, n, library),
        _PlainTrainer(fresh, splits, dev).run,
        iterations,
        seconds,
        rounds,
        log,
        "iterations",
    )
    fresh_result["library_workers"] = count

    log(f"evaluation, {count} task worker(s) (tasks/s):")
    model = plain_trainer.model  # any weights do: the work per task does not depend on them
    plain_evaluator = _PlainEvaluator(
        model,
        config,
        lambda rng: TaskSampler(splits.test, config.ways, config.shots, config.queries, rng),
        dev,
    )
    eval_result = _compare(
        lambda n: _library_eval(model, config, n, library),
        plain_evaluator.run,
        eval_tasks,
        seconds,
        rounds,
        log,
        "tasks",
    )
    eval_result["library_workers"] = count

    log("sine evaluation, tasks adapted 100 at a time (metatrain.engine.stacked) (tasks/s):")
    sine = preset(SINE_PRESET, seed=config.seed)
    sine_model = build_model(sine, generator=torch.Generator().manual_seed(0)).to(dev)
    sine_result = _compare(
        lambda n: _library_eval(sine_model, sine, n, replace(library, workers=1)),
        _PlainEvaluator(
            sine_model,
            sine,
            lambda rng: SineTaskSampler(rng, sine.sine_points),
            dev,
        ).run,
        eval_tasks,
        seconds,
        rounds,
        log,
        "tasks",
    )
    sine_result["library_workers"] = 1
    machine["load_average_at_end"] = _load()
    return {
        "machine": machine,
        "workload": workload_info(config),
        "train": train_result,
        "train_fresh_adam": fresh_result,
        "evaluate": eval_result,
        "evaluate_sine": sine_result,
    }


def workload_info(config: Config) -> dict[str, Any]:
    """What each side of the bench runs, from the bench's config (see ``bench_config``)."""
    c = config
    return {
        "preset": PRESET,
        "meta_batch": c.meta_batch,
        "inner_iters": c.inner_iters,
        "inner_batch": c.inner_batch,
        "train_shots": c.train_shots,
        "ways": c.ways,
        "algorithm": c.algorithm,
        "inner_optimizer": f"adam(betas=(0, {c.adam_beta2}), lr={c.inner_lr})",
        "library_keeps_adam_state": c.keep_adam_state,
        "eval_inner_iters": c.eval_inner_iters,
        "eval_inner_batch": c.eval_inner_batch,
        "shots": c.shots,
        "queries": c.queries,
        "transductive": c.transductive,
    }


def format_report(result: dict[str, Any]) -> str:
    """The human-readable form of ``run_bench``'s result."""
    m, w = result["machine"], result["workload"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"torch {m['torch']}, {m['threads']} threads (plain loop), "
        f"{m.get('library_workers', 1)} task worker(s) (library), device {m['device']}"
        + (f" ({m['gpu']})" if m.get("gpu") else ""),
        f"load average: {m['load_average_at_start']} at start, {m['load_average_at_end']} at "
        "end (other processes share these cores)",
        f"workload: {w['preset']}: {w['meta_batch']} tasks per meta-batch, {w['inner_iters']} "
        f"inner steps of batch {w['inner_batch']} ({w['train_shots']} shots x {w['ways']} ways), "
        f"{w['algorithm']}; evaluation {w['eval_inner_iters']} steps of batch "
        f"{w['eval_inner_batch']}, transductive={w['transductive']}",
    ]
    load = m.get("load_average_at_start")
    if load and m.get("usable_cores") and load[0] >= m["usable_cores"] and m["threads"] > 1:
        lines.append(
            "note: the cores were busy with other processes; with several torch threads the "
            "figures are then mostly scheduling noise (compare --threads 1)"
        )
    lines.append("")
    medians: list[str] = []
    steals: list[str] = []
    worst = 0.0
    for title, key, unit in (
        ("training", "train", "iterations"),
        ("train fresh", "train_fresh_adam", "iterations"),
        ("evaluation", "evaluate", "tasks"),
        ("sine eval", "evaluate_sine", "tasks"),
    ):
        if key not in result:
            continue
        r = result[key]
        lib, plain = r["library"], r["plain"]
        rate_unit = "meta-it/s" if unit == "iterations" else "tasks/s"
        line = (
            f"{title:12s} {r[unit]:>6} {unit:10s}  library {lib[f'{unit}_per_s']:8.2f} "
            f"{rate_unit}  plain {plain[f'{unit}_per_s']:8.2f} {rate_unit}  "
            f"library/plain {r['speedup']:.2f}x"
        )
        if r.get("library_workers", 1) == 1:
            # CPU time is this process's: with task workers it would leave their work out.
            line += (
                f"  (per CPU second: {lib[f'{unit}_per_cpu_s']:.2f} "
                f"vs {plain[f'{unit}_per_cpu_s']:.2f}, {r['speedup_cpu']:.2f}x"
                + ("; library on 2 threads" if r.get("threaded_backward") else "")
                + ")"
            )
        else:
            line += f"  ({r['library_workers']} task workers)"
        lines.append(line)
        if r.get("speedup_round_median") is not None:
            medians.append(f"{title} {r['speedup_round_median']:.2f}x")
        if r.get("steal_share") is not None:
            steals.append(f"{title} {100 * r['steal_share']:.0f}%")
            worst = max(worst, r["steal_share"])
    if medians:
        lines.append("median of the per-round ratios: " + ", ".join(medians))
    if steals:
        lines.append("hypervisor steal (share of all CPU time, /proc/stat): " + ", ".join(steals))
    if worst >= STEAL_NOTE:
        lines.append(
            f"note: the hypervisor took up to {100 * worst:.0f}% of these cores' time: other "
            "virtual machines share the host, and the figures move with them; rerun, or "
            "compare the per-round ratios"
        )
    if "train_fresh_adam" in result:
        lines += [
            "",
            "training: the preset as the paper runs it, Adam's moments chained from task to "
            "task, so the library trains its tasks one after another;",
            "train fresh: keep_adam_state=false, each task from a fresh Adam, the plain loop's "
            "own arithmetic; the library trains a meta-batch's tasks side by side.",
        ]
    if "evaluate_sine" in result:
        lines.append(
            "sine eval: the sine preset's evaluation (32 SGD steps per task); the library "
            "adapts 100 tasks at once with stacked weights, the plain loop one at a time."
        )
    return "\n".join(lines)
