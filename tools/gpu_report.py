#!/usr/bin/env python3
"""What a short run on a GPU machine should measure, in one command (a tool, not the product).

    python3 tools/gpu_report.py --out DIR --budget-seconds 480 [--device cuda]
        [--presets omniglot-5way-1shot,omniglot-5way-5shot,...] [--skip bench,graphs]

Stages, in order; each runs in its own subprocess with its own deadline (a stage that overruns
is killed and recorded as {"error": ...}; a CUDA error in one stage cannot poison the next):

1. environment: torch/CUDA versions, GPU, nvidia-smi, CPU count -> DIR/environment.json
2. correctness: omniglot-5way-1shot, 3 meta-iterations with train() on CPU and on the device
   from the same seed; max |weight difference| (recorded, never a failure)
3. bench: metatrain.bench.run_bench on the device (library vs plain loop), small budget
4. graphs (CUDA only): one inner step of the Omniglot net through the engine's learner, eager
   and replayed from its CUDA graph, batch 10 (training) and 5 (evaluation): ms per step and
   max |weight difference| after N steps
5. presets: one subprocess per preset, in parallel, each: time ~20 meta-iterations, train as
   many of the preset's meta-iterations as fit (the library's real train()), then evaluate
   transductive and non-transductive on the test split until its deadline -> DIR/<preset>.json
6. summary: DIR/summary.json (everything) and a table printed last on stdout.

DIR holds environment.json, summary.json, report.log (this stdout) and one <preset>.json per
preset. Run folders live in a temporary work folder outside DIR and are deleted at the end
(--keep-work keeps them). Stage budgets are caps: time a stage does not use goes to the
presets. The whole script stays within --budget-seconds (plus a few seconds to kill a stuck
child).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

STAGES = ("environment", "correctness", "bench", "graphs", "presets")
DEFAULT_PRESETS = "omniglot-5way-1shot"
# (fraction of the budget, floor, ceiling) in seconds: the most a stage may take.
STAGE_CAPS = {
    "environment": (0.04, 10.0, 20.0),
    "correctness": (0.09, 12.0, 45.0),
    "bench": (0.14, 18.0, 75.0),
    "graphs": (0.07, 10.0, 40.0),
}
MARGIN = (0.04, 5.0, 20.0)  # kept free at the end: summary, stopping stragglers
PRESETS_MIN_SECONDS = 15.0  # earlier stages are cut short to leave the presets at least this
KILL_GRACE = 3.0  # seconds between SIGTERM and SIGKILL of an overrunning child
CHILD_END_MARGIN = 2.0  # a preset child stops its own work this long before its deadline

# ----------------------------------------------------------------------------------------
# small helpers (no torch here: the orchestrator never imports it)


def clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def jsonable(obj: Any) -> Any:
    """Plain JSON (NaN and infinities become None; tuples lists; unknown objects strings)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    return str(obj)


def write_json(path: Path, obj: Any) -> None:
    """Atomically (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def short_traceback(lines: int = 6) -> str:
    """The end of the current traceback (the whole one goes into the JSON)."""
    return "\n".join(traceback.format_exc().rstrip().splitlines()[-lines:])


class Terminated(BaseException):
    """SIGTERM in a child: unwind (finally blocks write what we have), then exit."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"signal {signum}")


class Log:
    """Timestamped lines on stdout (flushed) and in a log file; thread-safe."""

    def __init__(self, t0: float, path: Path | None = None) -> None:
        self.t0 = t0
        self.path = path
        self._lock = threading.Lock()

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        line = f"[{time.time() - self.t0:6.1f}s {stamp}] {message}"
        with self._lock:
            print(line, flush=True)
            if self.path is not None:
                with contextlib.suppress(OSError), open(self.path, "a", encoding="utf-8") as f:
                    f.write(line + "\n")


def plain_print(message: str) -> None:
    """Children print bare lines: the orchestrator stamps them as they arrive."""
    print(message, flush=True)


# ----------------------------------------------------------------------------------------
# planning (pure functions, tested)


def stage_caps(
    budget: float, device: str, skip: set[str], graphs_on_cpu: bool = False
) -> dict[str, float]:
    caps = {}
    for name, (frac, low, high) in STAGE_CAPS.items():
        if name in skip or (name == "graphs" and device != "cuda" and not graphs_on_cpu):
            continue
        caps[name] = clamp(frac * budget, low, high)
    return caps


def plan_training(
    *,
    meta_iters: int,
    rate: float,
    train_budget: float,
    validation_interval: int,
    validation_tasks: int,
    eval_task_seconds: float,
    max_validation_share: float = 0.1,
) -> dict[str, Any]:
    """How many meta-iterations fit ``train_budget`` at ``rate`` it/s, and how often to validate.

    The preset's validation interval is kept unless its validations would take more than
    ``max_validation_share`` of the budget; then it is raised (or validation turned off when
    even one validation would take more).
    """
    rate = max(rate, 1e-9)
    val_cost = validation_tasks * max(eval_task_seconds, 0.0)
    n0 = max(1, min(meta_iters, math.floor(rate * train_budget)))
    allowed_time = max_validation_share * train_budget
    plan: dict[str, Any] = {
        "train_budget_s": train_budget,
        "rate_it_per_s": rate,
        "validation_interval_preset": validation_interval,
        "validation_seconds_each_est": val_cost,
    }
    if validation_interval <= 0:
        n, interval, reason = n0, 0, "the preset does not validate"
    else:
        count = n0 // validation_interval
        if count * val_cost <= allowed_time:
            n = max(1, min(meta_iters, math.floor(rate * (train_budget - count * val_cost))))
            interval, reason = validation_interval, "preset's interval fits"
        else:
            allowed = math.floor(allowed_time / val_cost) if val_cost > 0 else 0
            n = max(1, min(meta_iters, math.floor(rate * (train_budget - allowed * val_cost))))
            if allowed >= 1:
                interval = max(validation_interval, math.ceil(n / allowed))
                reason = (
                    f"raised: {count} validations of ~{val_cost:.1f} s would exceed "
                    f"{max_validation_share:.0%} of the train budget"
                )
            else:
                interval = 0
                reason = (
                    f"off: one validation (~{val_cost:.1f} s) exceeds "
                    f"{max_validation_share:.0%} of the train budget"
                )
    plan.update(
        {
            "meta_iters": n,
            "validation_interval": interval,
            "validations_expected": n // interval if interval else 0,
            "validation_reason": reason,
        }
    )
    return plan


# ----------------------------------------------------------------------------------------
# torch-side helpers (imported lazily in the children)


def _setup_torch(threads: int) -> Any:
    import torch

    torch.set_num_threads(max(1, threads))
    return torch


def _sync(torch: Any, device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def deadline_reporter(
    until: float,
    *,
    max_polls: int | None = None,
    enough_iterations: int | None = None,
    min_seconds: float = 0.0,
    at_least_iterations: int = 0,
    hard_until: float | None = None,
) -> Any:
    """A metatrain Reporter whose should_stop() turns True

    - at ``until`` (epoch seconds), but not before ``at_least_iterations`` meta-iterations;
    - at ``hard_until`` whatever was done;
    - after ``max_polls`` polls (evaluation: tasks);
    - once ``enough_iterations`` meta-iterations are done and ``min_seconds`` have passed
      since the first one.

    It records the time of every poll (before each meta-iteration and each evaluation task)
    and of every meta-iteration, and the validations. (Defined here, in the children:
    importing metatrain imports torch, which the orchestrator never does.)"""
    from metatrain.reporting import Reporter

    class DeadlineReporter(Reporter):
        def __init__(self) -> None:
            self.polls: list[float] = []
            self.iter_times: list[float] = []
            self.iter_seconds: list[float] = []
            self.last_metrics: dict[str, float] = {}
            self.validations: list[dict[str, Any]] = []
            self.checkpoints = 0
            self.stop_reason: str | None = None

        def should_stop(self) -> bool:
            now = time.time()
            self.polls.append(time.perf_counter())
            n = len(self.iter_times)
            if max_polls is not None and len(self.polls) > max_polls:
                self.stop_reason = "max_polls"
            elif (
                enough_iterations is not None
                and n >= enough_iterations
                and time.perf_counter() - self.iter_times[0] >= min_seconds
            ):
                self.stop_reason = "enough_iterations"
            elif now >= until and n >= at_least_iterations:
                self.stop_reason = "deadline"
            elif hard_until is not None and now >= hard_until:
                self.stop_reason = "hard_deadline"
            return self.stop_reason is not None

        def on_iteration(self, iteration: int, metrics: dict[str, float]) -> None:
            self.iter_times.append(time.perf_counter())
            self.iter_seconds.append(float(metrics.get("seconds", 0.0)))
            self.last_metrics = {"iteration": iteration, **metrics}

        def on_validation(self, iteration: int, result: Any) -> None:
            self.validations.append({"iteration": iteration, **result.to_dict()})

        def on_checkpoint(self, iteration: int, path: str) -> None:
            self.checkpoints += 1

    return DeadlineReporter()


def _rate(rep: Any) -> tuple[float, int]:
    """Meta-iterations per second between the first and the last on_iteration (the first one
    pays for allocations); falls back to the one iteration's own seconds."""
    times = rep.iter_times
    if len(times) >= 3:
        return (len(times) - 1) / max(times[-1] - times[0], 1e-9), len(times)
    if rep.iter_seconds:
        return 1.0 / max(statistics.median(rep.iter_seconds), 1e-9), len(times)
    return 0.0, 0


def _task_seconds(rep: Any) -> float | None:
    """Median seconds per evaluation task from the polls before each task (first skipped)."""
    gaps = [b - a for a, b in zip(rep.polls, rep.polls[1:], strict=False)]
    if len(gaps) >= 2:
        gaps = gaps[1:]
    return statistics.median(gaps) if gaps else None


def _weights_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    per = {}
    worst = 0.0
    scale = 0.0
    for key in sorted(a):
        d = float((a[key].double() - b[key].double()).abs().max())
        per[key] = d
        worst = max(worst, d)
        scale = max(scale, float(a[key].double().abs().max()))
    return {"max_abs_diff": worst, "max_abs_weight": scale, "per_tensor": per}


# ----------------------------------------------------------------------------------------
# stages (each runs in its own subprocess: `--stage NAME`)


def _record(out: dict[str, Any], key: str, fn: Callable[[], Any]) -> None:
    """out[key] = fn(), or {"error": ...}: one odd query never loses the others."""
    try:
        out[key] = fn()
    except Exception as exc:  # noqa: BLE001 - recorded
        out[key] = {"error": error_text(exc)}


def stage_environment(args: argparse.Namespace, save: Callable[[dict], None]) -> dict:
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "metatrain_data": os.environ.get("METATRAIN_DATA"),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                out["mem_total"] = line.split(":", 1)[1].strip()
    save(out)
    t = time.perf_counter()
    import torch

    out["import_torch_s"] = round(time.perf_counter() - t, 3)
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    out["cuda_available"] = torch.cuda.is_available()
    out["torch_default_threads"] = torch.get_num_threads()
    for mod in ("numpy", "safetensors", "PIL"):
        _record(out, f"{mod}_version", lambda mod=mod: __import__(mod).__version__)
    if torch.cuda.is_available():
        t = time.perf_counter()
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
        out["cuda_init_s"] = round(time.perf_counter() - t, 3)
        props = torch.cuda.get_device_properties(0)
        out["device_count"] = torch.cuda.device_count()
        out["device_name"] = torch.cuda.get_device_name(0)
        _record(out, "device_capability", lambda: list(torch.cuda.get_device_capability(0)))
        _record(out, "device_memory_gib", lambda: round(props.total_memory / 2**30, 2))
        _record(out, "device_sm_count", lambda: props.multi_processor_count)
        _record(out, "cudnn", torch.backends.cudnn.version)
        _record(out, "cudnn_benchmark", lambda: torch.backends.cudnn.benchmark)
        _record(out, "cudnn_deterministic", lambda: torch.backends.cudnn.deterministic)
    save(out)
    t = time.perf_counter()
    import metatrain
    from metatrain.data import omniglot_available

    out["import_metatrain_s"] = round(time.perf_counter() - t, 3)
    from metatrain.bench import machine_info  # CPU model, usable cores, load, threads

    _record(out, "machine", lambda: machine_info(torch.device("cpu")))
    out["metatrain_path"] = str(Path(metatrain.__file__).parent)
    out["omniglot_available"] = omniglot_available()
    save(out)
    query = (
        "--query-gpu=name,memory.total,memory.used,driver_version,clocks.max.sm,power.limit,"
        "compute_mode,mig.mode.current"
    )
    for label, cmd in (
        ("nvidia_smi", ["nvidia-smi"]),
        ("nvidia_smi_query", ["nvidia-smi", query, "--format=csv"]),
    ):
        if shutil.which(cmd[0]) is None:
            out[label] = None
            continue
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=6)
            out[label] = (proc.stdout + proc.stderr)[-6000:]
        except (OSError, subprocess.SubprocessError) as exc:
            out[label] = {"error": error_text(exc)}
        save(out)
    return out


def stage_correctness(args: argparse.Namespace, save: Callable[[dict], None]) -> dict:
    torch = _setup_torch(args.threads)
    from safetensors.torch import load_file

    from metatrain import Compute
    from metatrain.config import preset
    from metatrain.engine.device import resolve_device
    from metatrain.evaluate import evaluate
    from metatrain.train import train

    dev = resolve_device(args.device)
    iters = 3
    cfg = preset(
        "omniglot-5way-1shot", meta_iters=iters, validation_interval=0, checkpoint_interval=iters
    )
    out: dict[str, Any] = {
        "preset": "omniglot-5way-1shot",
        "meta_iters": iters,
        "device": str(dev),
        "call": f"train(preset('omniglot-5way-1shot', meta_iters={iters}, "
        f"validation_interval=0, checkpoint_interval={iters}), dir, compute=Compute(...))",
    }
    work = Path(args.work) / "correctness"
    runs = {}
    losses = {}
    for label, device in (("cpu", torch.device("cpu")), ("device", dev)):
        t = time.perf_counter()
        rep = deadline_reporter(args.deadline)
        res = train(cfg, work / label, reporter=rep, compute=Compute(device=str(device)))
        _sync(torch, device)
        out[f"{label}_train_s"] = round(time.perf_counter() - t, 3)
        out[f"{label}_iterations_done"] = res.iterations_done
        if res.stopped:
            raise RuntimeError(f"{label} training hit the stage deadline")
        runs[label] = load_file(str(work / label / "initialization.safetensors"))
        lines = (work / label / "metrics.jsonl").read_text().splitlines()
        losses[label] = [json.loads(x).get("inner_loss") for x in lines if x.strip()]
        save(out)
    diff = _weights_diff(runs["cpu"], runs["device"])
    out["weights"] = diff
    out["max_abs_diff"] = diff["max_abs_diff"]
    out["inner_loss_cpu"] = losses["cpu"]
    out["inner_loss_device"] = losses["device"]
    out["inner_loss_max_abs_diff"] = max(
        (abs(a - b) for a, b in zip(losses["cpu"], losses["device"], strict=False)),
        default=None,
    )
    out["note"] = "expected ~1e-4..1e-3 between CPU and cuDNN; 0 when the device is the CPU"
    save(out)
    # The same (CPU-trained) weights evaluated on both devices, both modes.
    tasks = 20 if dev.type == "cuda" else 4
    evals: dict[str, Any] = {}
    out["evaluate_same_weights"] = evals
    for mode in (True, False):
        for label, device in (("cpu", torch.device("cpu")), ("device", dev)):
            if time.time() > args.deadline - 2:
                evals[f"{label}_{'trans' if mode else 'nontrans'}"] = {"error": "no time left"}
                continue
            r = evaluate(
                work / "cpu",
                tasks=tasks,
                transductive=mode,
                split="test",
                compute=Compute(device=str(device)),
                reporter=deadline_reporter(args.deadline - 1),
            )
            evals[f"{label}_{'trans' if mode else 'nontrans'}"] = {
                "accuracy": r.accuracy,
                "tasks": r.tasks,
                "seconds": round(r.seconds, 3),
            }
            save(out)
    return out


def stage_bench(args: argparse.Namespace, save: Callable[[dict], None]) -> dict:
    _setup_torch(args.threads)
    from metatrain import Compute
    from metatrain.bench import format_report, run_bench

    # run_bench takes (data, warm-ups: a few seconds) + for each of its four comparisons
    # (training, fresh training, evaluation, sine evaluation) about 1-2 * seconds (the slower
    # side takes ~seconds, the faster less): keep a margin.
    left = args.deadline - time.time()
    seconds = max(0.5, (left - 8.0) / 7.0)
    params = {"device": args.device, "seconds": round(seconds, 2), "rounds": 2}
    save({"params": params})
    lines: list[str] = []

    def log(text: str) -> None:
        lines.append(text)
        plain_print(text)

    compute = Compute(device=args.device, workers="auto")
    result = run_bench(compute=compute, seconds=seconds, rounds=2, log=log)
    report = format_report(result)
    plain_print(report)
    return {
        "params": params,
        "call": f"run_bench(compute=Compute(device={args.device!r}, workers='auto'), "
        f"seconds={seconds:.2f}, rounds=2)",
        "result": result,
        "report": report,
        "train_speedup": result["train"]["speedup"],
        "eval_speedup": result["evaluate"]["speedup"],
        "sine_eval_speedup": result["evaluate_sine"]["speedup"],
        "log": lines,
    }


def _time_steps(torch: Any, dev: Any, fn: Callable[[int], None], n: int) -> float:
    """Wall-clock ms per step of ``n`` calls ``fn(0..n-1)``, synchronised before and after."""
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1000 / n


def graph_case(torch: Any, dev: Any, batch: int, steps: int, check_steps: int) -> dict:
    """One inner step of the Omniglot net (forward, summed cross-entropy, backward, Adam)
    through the engine's learner, three ways: ``eager_library`` (the eager step the library
    falls back to without graphs), ``eager_capturable`` (the same with capturable Adam, which
    is what a graph replays) and ``graph`` (replayed from its CUDA graph).

    On a CPU device this is a dry run (no capture: "graph" is the eager step, Adam is not
    capturable), so that the plumbing can be tested without a GPU.
    """
    from metatrain import seeding
    from metatrain.config import preset
    from metatrain.engine.device import prepare_model
    from metatrain.engine.learner import Learner
    from metatrain.models import build_model

    cuda = dev.type == "cuda"
    cfg = preset("omniglot-5way-1shot", keep_adam_state=True)
    kinds = {
        "eager_library": {"cuda_graphs": False},
        "eager_capturable": {"step": "autograd", "capturable": cuda},
        "graph": {"step": "cuda_graph"} if cuda else {"step": "autograd"},
    }

    def learner(options: dict[str, Any]) -> Any:
        model = build_model(cfg, generator=seeding.init_generator(cfg.seed))
        prepare_model(model, dev)  # channels_last, as train() and evaluate()
        return Learner.from_config(model, cfg, **options)

    gen = torch.Generator().manual_seed(1234 + batch)
    nb = 32
    xs = [
        (torch.rand(batch, 1, cfg.image_size, cfg.image_size, generator=gen) > 0.5)
        .float()
        .to(dev)
        .contiguous(memory_format=torch.channels_last)
        for _ in range(nb)
    ]
    ys = [torch.randint(0, cfg.ways, (batch,), generator=gen).to(dev) for _ in range(nb)]

    # correctness: check_steps steps of each from the same initial weights and a fresh Adam
    weights: dict[str, list[Any]] = {}
    capture_s = 0.0
    for name, options in kinds.items():
        lrn = learner(options)
        t = time.perf_counter()
        for i in range(check_steps):
            lrn.step(xs[i % nb], ys[i % nb])
            if i == 0 and name == "graph":
                capture_s = time.perf_counter() - t
        weights[name] = [p.detach().clone() for p in lrn.params]
        if name == "graph" and cuda and not lrn.uses_cuda_graphs:
            raise RuntimeError(f"the capture failed: {lrn.inner_step.graphs.failed}")
    initial = [p.detach() for p in learner({}).params]

    def max_diff(a: list[Any], b: list[Any]) -> float:
        return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))

    # timing: the three in alternating rounds after a warm-up
    learners = {name: learner(options) for name, options in kinds.items()}
    for lrn in learners.values():
        _time_steps(torch, dev, lambda i, lrn=lrn: lrn.step(xs[i % nb], ys[i % nb]), 20)
    wall: dict[str, list[float]] = {k: [] for k in kinds}
    rounds = 2
    n = max(5, steps // rounds)
    for r in range(rounds):
        order = list(learners.items())
        if r % 2:
            order.reverse()
        for name, lrn in order:
            ms = _time_steps(torch, dev, lambda i, lrn=lrn: lrn.step(xs[i % nb], ys[i % nb]), n)
            wall[name].append(ms)
    timing = {
        name: {
            "wall_ms_per_step": round(statistics.median(ms), 4),
            "wall_ms_per_step_rounds": [round(x, 4) for x in ms],
            "steps": n * rounds,
        }
        for name, ms in wall.items()
    }
    lib = timing["eager_library"]["wall_ms_per_step"]
    gr = timing["graph"]["wall_ms_per_step"]
    tolerance = 1e-4
    diff_cap = max_diff(weights["graph"], weights["eager_capturable"])
    return {
        "batch": batch,
        "dry_run_without_cuda": not cuda,
        "capture_s": round(capture_s, 4),
        "timing": timing,
        "eager_ms": lib,
        "graph_ms": gr,
        "speedup_graph_vs_eager_library": round(lib / max(gr, 1e-9), 3),
        "speedup_graph_vs_eager_capturable": round(
            timing["eager_capturable"]["wall_ms_per_step"] / max(gr, 1e-9), 3
        ),
        "check_steps": check_steps,
        "weights_moved_max_abs": max_diff(weights["eager_library"], initial),
        "max_abs_diff_graph_vs_eager_capturable": diff_cap,
        "max_abs_diff_graph_vs_eager_library": max_diff(weights["graph"], weights["eager_library"]),
        "tolerance": tolerance,
        "within_tolerance": diff_cap <= tolerance,
    }


def stage_graphs(args: argparse.Namespace, save: Callable[[dict], None]) -> dict:
    torch = _setup_torch(args.threads)
    from metatrain.engine.device import resolve_device

    dev = resolve_device(args.device)
    dry = dev.type != "cuda"
    if dry and not args.graphs_on_cpu:
        return {"skipped": "CUDA graphs need a CUDA device"}
    out: dict[str, Any] = {
        "what": "one inner step of omniglot_conv (channels_last) through metatrain's learner: "
        "forward, summed cross-entropy, backward, Adam(betas=(0, 0.999), eps=1e-8); "
        "eager_library = its eager step (cuda_graphs off); eager_capturable = the same with "
        "capturable Adam; graph = its CUDA graph replay, the inputs copied into static tensors "
        "inside the timing. ms/step: wall clock over a block of steps (sync before and after), "
        "median of 2 rounds.",
        "dry_run_without_cuda": dry,
        "cases": {},
    }
    steps, check = (40, 3) if dry else (400, 20)
    for batch in (10, 5):
        key = f"batch_{batch}"
        if time.time() > args.deadline - 3:
            out["cases"][key] = {"error": "no time left"}
            continue
        try:
            out["cases"][key] = graph_case(torch, dev, batch, steps=steps, check_steps=check)
        except Exception as exc:  # noqa: BLE001 - recorded, the other batch still runs
            out["cases"][key] = {"error": error_text(exc), "traceback": traceback.format_exc()}
        c = out["cases"][key]
        if "error" not in c:
            plain_print(
                f"batch {batch}: eager {c['eager_ms']:.3f} ms/step, graph {c['graph_ms']:.3f} "
                f"ms/step ({c['speedup_graph_vs_eager_library']:.2f}x); max|dw| graph vs eager "
                f"{c['max_abs_diff_graph_vs_eager_capturable']:.2e} after {check} steps"
            )
        else:
            plain_print(f"batch {batch}: {c['error']}")
        save(out)
        if not dry:
            with contextlib.suppress(Exception):
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
    return out


STAGE_FUNCS = {
    "environment": stage_environment,
    "correctness": stage_correctness,
    "bench": stage_bench,
    "graphs": stage_graphs,
}


def run_stage_child(args: argparse.Namespace) -> int:
    """``--stage NAME``: run one stage, writing ``--stage-out`` as it goes."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    path = Path(args.stage_out)
    t0 = time.perf_counter()
    state: dict[str, Any] = {"status": "running"}

    def save(partial: dict) -> None:
        state["result"] = partial
        state["seconds"] = round(time.perf_counter() - t0, 3)
        write_json(path, state)

    save({})
    try:
        result = STAGE_FUNCS[args.stage](args, save)
        state["status"] = "skipped" if "skipped" in result else "ok"
        save(result)
        return 0
    except (Exception, Terminated) as exc:
        state["status"] = "error"
        state["error"] = error_text(exc)
        state["traceback"] = traceback.format_exc()[-4000:]
        save(state.get("result") or {})
        plain_print(short_traceback())
        return 1


# ----------------------------------------------------------------------------------------
# one preset (`--single-preset NAME`)


def _metrics_curve(path: Path, points: int = 100) -> dict[str, Any]:
    """The run's metrics.jsonl, binned to at most ``points`` points, validations kept."""
    iters: list[dict[str, Any]] = []
    validations: list[dict[str, Any]] = []
    size = path.stat().st_size
    with open(path, encoding="utf-8") as f:
        for line in f:
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if "validation" in rec:
                    v = rec["validation"]
                    validations.append(
                        {
                            "iteration": rec["iteration"],
                            **{
                                k: v.get(k)
                                for k in ("accuracy", "ci95", "tasks", "split", "loss_after")
                            },
                        }
                    )
                else:
                    iters.append(rec)
    binned = []
    if iters:
        width = math.ceil(len(iters) / points)
        for start in range(0, len(iters), width):
            chunk = iters[start : start + width]
            row: dict[str, Any] = {"iteration": chunk[-1]["iteration"]}
            for key in ("inner_loss", "inner_accuracy", "seconds"):
                values = [r[key] for r in chunk if r.get(key) is not None]
                if values:
                    row[key] = round(statistics.fmean(values), 5)
            binned.append(row)
    return {"metrics_jsonl_bytes": size, "iterations": binned, "validations": validations}


def run_single_preset(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _raise_terminated)
    name = args.single_preset
    out_path = Path(args.out) / f"{name}.json"
    work = Path(args.work) / name
    deadline = args.deadline
    t_start = time.time()
    res: dict[str, Any] = {
        "preset": name,
        "status": "running",
        "device": args.device,
        "threads": args.threads,
        "deadline_budget_s": round(deadline - t_start, 1),
        "argv": [sys.executable, *sys.argv],
        "errors": {},
        "timeline": {},
    }

    def mark(what: str) -> None:
        res["timeline"][what] = round(time.time() - t_start, 2)

    def save() -> None:
        write_json(out_path, res)

    def left() -> float:
        return deadline - time.time() - CHILD_END_MARGIN

    save()
    trep = None
    try:
        torch = _setup_torch(args.threads)
        from metatrain import Compute
        from metatrain.config import preset
        from metatrain.engine.device import resolve_device
        from metatrain.evaluate import evaluate
        from metatrain.train import train

        dev = resolve_device(args.device)
        compute = Compute(device=str(dev))
        mark("imported")
        base = preset(name)
        res["preset_meta_iters"] = base.meta_iters
        res["preset_config"] = base.to_dict()
        save()

        # (a) rate: ~20 meta-iterations (and a few evaluation tasks) of the preset
        probe_cap = clamp(0.1 * left(), 2.0, 30.0)
        plain_print(f"{name}: probing the rate ({probe_cap:.0f} s at most)")
        probe_cfg = base.replace(validation_interval=0, checkpoint_interval=base.meta_iters)
        t_probe = time.time()
        # stop after >= 20 iterations and >= 2 s, or at the cap (counted from the start, data
        # loading included) once 3 iterations are done, or when only the evaluation's share
        # of the time is left
        rep = deadline_reporter(
            t_probe + probe_cap,
            enough_iterations=20,
            min_seconds=min(2.0, probe_cap),
            at_least_iterations=3,
            hard_until=t_probe + 0.5 * left(),
        )
        probe_dir = work / "probe"
        train(probe_cfg, probe_dir, reporter=rep, compute=compute)
        rate, done = _rate(rep)
        if done == 0:
            raise RuntimeError("no time for a single meta-iteration")
        res["probe"] = {
            "iterations": done,
            "seconds": round(time.time() - t_probe, 3),
            "meta_iters_per_s": rate,
        }
        mark("probed_train")
        eval_rep = deadline_reporter(time.time() + clamp(0.05 * left(), 1.0, 15.0), max_polls=6)
        try:
            evaluate(
                probe_dir,
                tasks=base.final_eval_tasks,
                transductive=base.transductive,
                split="test",
                compute=compute,
                reporter=eval_rep,
            )
            task_s = _task_seconds(eval_rep)
        except Exception as exc:  # noqa: BLE001 - plan without it; the evaluation will tell
            res["errors"]["probe_eval"] = error_text(exc)
            task_s = None
        res["probe"]["eval_task_seconds"] = task_s
        mark("probed_eval")
        plain_print(
            f"{name}: {rate:.2f} meta-it/s, "
            + (f"{task_s * 1000:.0f} ms per eval task" if task_s else "no eval timing")
        )
        save()

        # (b) plan
        remaining = left()
        train_budget = args.train_share * remaining
        plan = plan_training(
            meta_iters=base.meta_iters,
            rate=rate,
            train_budget=train_budget,
            validation_interval=base.validation_interval,
            validation_tasks=base.validation_tasks,
            eval_task_seconds=task_s or 0.0,
        )
        res["plan"] = plan
        cfg = base.replace(
            meta_iters=plan["meta_iters"], validation_interval=plan["validation_interval"]
        )
        res["config"] = cfg.to_dict()
        res["config_hash"] = cfg.config_hash()
        res["iterations_planned"] = cfg.meta_iters
        run_dir = work / "run"
        res["run_dir"] = str(run_dir)
        vset = (
            f" --set validation_interval={cfg.validation_interval}"
            if cfg.validation_interval != base.validation_interval
            else ""
        )
        res["commands"] = {
            "train": f"train(preset({name!r}, meta_iters={cfg.meta_iters}, "
            f"validation_interval={cfg.validation_interval}), RUN_DIR, "
            f"compute=Compute(device={args.device!r}))",
            "train_cli": f"python -m metatrain train --preset {name} --iterations "
            f"{cfg.meta_iters}{vset} --device {args.device} --threads {args.threads} "
            "--out RUN_DIR",
        }
        save()

        # (c) train
        train_stop = min(time.time() + 1.25 * train_budget + 5.0, deadline - 0.25 * remaining)
        trep = deadline_reporter(train_stop)
        plain_print(
            f"{name}: training {cfg.meta_iters}/{base.meta_iters} meta-iterations "
            f"(validation every {cfg.validation_interval or 'never'}), budget {train_budget:.0f} s"
        )
        t = time.perf_counter()
        tres = train(cfg, run_dir, reporter=trep, compute=compute)
        _sync(torch, dev)
        train_s = time.perf_counter() - t
        mark("trained")
        iter_time = sum(trep.iter_seconds)
        res["iterations_done"] = tres.iterations_done
        res["train"] = {
            "iterations_done": tres.iterations_done,
            "total_iterations": tres.total_iterations,
            "stopped": tres.stopped,
            "stop_reason": trep.stop_reason if tres.stopped else None,
            "seconds": round(train_s, 3),
            "iteration_seconds_sum": round(iter_time, 3),
            "meta_iters_per_s": tres.iterations_done / max(iter_time, 1e-9),
            "meta_iters_per_s_wall": tres.iterations_done / max(train_s, 1e-9),
            "last_metrics": trep.last_metrics,
            "validations": trep.validations,
            "checkpoints": trep.checkpoints,
        }
        try:
            res["metrics"] = _metrics_curve(run_dir / "metrics.jsonl")
        except Exception as exc:  # noqa: BLE001 - the curve is a nicety
            res["metrics"] = {"error": error_text(exc)}
        plain_print(
            f"{name}: trained {tres.iterations_done}/{cfg.meta_iters} in {train_s:.1f} s "
            f"({res['train']['meta_iters_per_s']:.2f} it/s)"
        )
        save()
    except (Exception, Terminated) as exc:
        res["status"] = "error"
        res["errors"]["train"] = error_text(exc)
        res["errors"]["train_traceback"] = traceback.format_exc()[-3000:]
        if trep is not None and trep.iter_times:
            res["train_partial"] = {
                "iterations": len(trep.iter_times),
                "iteration_seconds_sum": sum(trep.iter_seconds),
                "last_metrics": trep.last_metrics,
            }
        save()
        plain_print(short_traceback())
        _cleanup(work, args.keep_work)
        return 1

    # (d) evaluate until the deadline, transductive then non-transductive
    res["eval"] = {}
    modes = [("transductive", True), ("non_transductive", False)]
    if not cfg.is_classification:
        modes = modes[:1]
        res["eval"]["non_transductive"] = {"skipped": "regression: one evaluation mode only"}
    terminated = False
    for i, (key, mode) in enumerate(modes):
        until = time.time() + max(0.0, left()) / (len(modes) - i)
        res["commands"][f"evaluate_{key}"] = (
            f"python -m metatrain evaluate RUN_DIR --tasks {cfg.final_eval_tasks} "
            f"--{'' if mode else 'no-'}transductive --split test --device {args.device}"
        )
        try:
            t = time.perf_counter()
            r = evaluate(
                run_dir,
                tasks=cfg.final_eval_tasks,
                transductive=mode,
                split="test",
                compute=compute,
                reporter=deadline_reporter(until),
            )
            d = r.to_dict()
            d["tasks_requested"] = cfg.final_eval_tasks
            d["wall_seconds"] = round(time.perf_counter() - t, 3)
            res["eval"][key] = d
            what = (
                f"{r.accuracy:.4f} +- {r.ci95 or 0:.4f}"
                if r.accuracy is not None
                else f"loss {r.loss_after}"
            )
            plain_print(f"{name}: {key}: {what} ({r.tasks} tasks, {r.seconds:.1f} s)")
        except (Exception, Terminated) as exc:
            res["eval"][key] = {"error": error_text(exc)}
            res["errors"][f"eval_{key}"] = traceback.format_exc()[-3000:]
            terminated = isinstance(exc, Terminated)
        mark(f"evaluated_{key}")
        save()
        if terminated:
            break
    res["status"] = "error" if res["errors"] else "ok"
    res["seconds"] = round(time.time() - t_start, 2)
    save()
    _cleanup(work, args.keep_work)
    return 0 if res["status"] == "ok" else 1


def _cleanup(work: Path, keep: bool) -> None:
    if not keep:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------------------
# the orchestrator


class Child:
    """A subprocess whose output lines are stamped and logged as they arrive."""

    def __init__(self, label: str, argv: list[str], log: Log) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.label = label
        self.tail: deque[str] = deque(maxlen=30)
        self.started = time.time()
        self.proc = subprocess.Popen(
            argv,
            cwd=str(REPO),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # its own process group: stop() reaches its children too
        )
        self._log = log
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.tail.append(line)
            self._log(f"[{self.label}] {line}")

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        """SIGTERM (the child writes what it has), SIGKILL after KILL_GRACE."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(KILL_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(2.0)

    def finish(self) -> None:
        self._reader.join(timeout=2.0)


def wait_children(children: list[Child], deadline: float) -> dict[str, bool]:
    """Wait for all until ``deadline``; stop the stragglers. Returns label -> timed out."""
    while time.time() < deadline and any(c.poll() is None for c in children):
        time.sleep(0.2)
    timed_out = {}
    for c in children:
        timed_out[c.label] = c.poll() is None
        c.stop()
        c.finish()
    return timed_out


class Orchestrator:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.time()
        self.end = self.t0 + args.budget_seconds
        self.out = Path(args.out).resolve()  # the children run in the repository root
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = Log(self.t0, self.out / "report.log")
        self.work = Path(tempfile.mkdtemp(prefix="gpu_report_work_"))
        self.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
        self.presets = [p.strip() for p in args.presets.split(",") if p.strip()]
        self.caps = stage_caps(args.budget_seconds, args.device, self.skip, args.graphs_on_cpu)
        self.margin = clamp(MARGIN[0] * args.budget_seconds, MARGIN[1], MARGIN[2])
        self.children: list[Child] = []
        data_note = "from the environment"
        if not os.environ.get("METATRAIN_DATA"):
            data_note = "not set, and no shared/data/omniglot found"
            for candidate in (REPO / "shared" / "data", REPO.parent / "shared" / "data"):
                if (candidate / "omniglot").is_dir():
                    os.environ["METATRAIN_DATA"] = str(candidate)  # the children inherit it
                    data_note = "not set: found next to the repository"
                    break
        self.summary: dict[str, Any] = {
            "script": "tools/gpu_report.py",
            "argv": [sys.executable, *sys.argv],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.t0)),
            "budget_seconds": args.budget_seconds,
            "device": args.device,
            "presets": self.presets,
            "stage_caps_s": self.caps,
            "margin_s": self.margin,
            "work_dir": str(self.work),
            "metatrain_data": os.environ.get("METATRAIN_DATA"),
            "metatrain_data_source": data_note,
            "stages": {},
        }

    def save(self) -> None:
        self.summary["elapsed_s"] = round(time.time() - self.t0, 2)
        with contextlib.suppress(OSError):
            write_json(self.out / "summary.json", self.summary)

    def _child_argv(self, *extra: str, threads: int) -> list[str]:
        return [
            sys.executable,
            str(Path(__file__).resolve()),
            "--out",
            str(self.out),
            "--work",
            str(self.work),
            "--device",
            self.args.device,
            "--threads",
            str(threads),
            *(["--graphs-on-cpu"] if self.args.graphs_on_cpu else []),
            *extra,
        ]

    def stage_deadline(self, name: str) -> float:
        later = [s for s in STAGES[STAGES.index(name) + 1 :] if s in self.caps]
        reserve = sum(self.caps[s] for s in later)
        if "presets" not in self.skip and self.presets:
            reserve += PRESETS_MIN_SECONDS
        return min(time.time() + self.caps[name], self.end - self.margin - reserve)

    def run_stage(self, name: str) -> None:
        record: dict[str, Any] = {"status": "running"}
        self.summary["stages"][name] = record
        deadline = self.stage_deadline(name)
        budget = deadline - time.time()
        record["budget_s"] = round(budget, 1)
        if budget < 3:
            record.update(status="error", error=f"no time left ({budget:.1f} s)")
            self.log(f"stage {name}: skipped, no time left")
            return
        self.log(f"stage {name}: start (budget {budget:.0f} s)")
        path = self.work / f"stage_{name}.json"
        t = time.time()
        child = Child(
            name,
            self._child_argv(
                "--stage",
                name,
                "--stage-out",
                str(path),
                "--deadline",
                f"{deadline:.3f}",
                threads=self.args.threads,
            ),
            self.log,
        )
        self.children.append(child)
        timed_out = wait_children([child], deadline + 1.0)[name]
        written = read_json(path) or {}
        record.update(written)
        record["seconds"] = round(time.time() - t, 2)
        record["returncode"] = child.proc.returncode
        if timed_out:
            record["status"] = "error"
            record["error"] = f"timed out after {budget:.0f} s (killed); partial result kept"
        elif not written:
            record["status"] = "error"
            record["error"] = f"exited {child.proc.returncode} without a result"
        elif record.get("status") not in ("ok", "skipped", "error"):
            record["status"] = "error"
            record["error"] = f"exited {child.proc.returncode} mid-stage; partial result kept"
        if record["status"] == "error":
            record["output_tail"] = list(child.tail)[-15:]
        if record["status"] == "ok":
            record.pop("traceback", None)
        self.log(f"stage {name}: {record['status']} in {record['seconds']:.1f} s")

    def run_presets(self) -> None:
        record: dict[str, Any] = {"status": "running", "results": {}}
        self.summary["stages"]["presets"] = record
        deadline = self.end - self.margin
        budget = deadline - time.time()
        record["budget_s"] = round(budget, 1)
        record["child_threads"] = self.args.child_threads
        if budget < 10:
            record.update(status="error", error=f"no time left ({budget:.1f} s)")
            return
        self.log(f"stage presets: {', '.join(self.presets)} in parallel (budget {budget:.0f} s)")
        t = time.time()
        kids = []
        for name in self.presets:
            (self.out / f"{name}.json").unlink(missing_ok=True)
            argv = self._child_argv(
                "--single-preset",
                name,
                "--deadline",
                f"{deadline:.3f}",
                "--train-share",
                str(self.args.train_share),
                *(["--keep-work"] if self.args.keep_work else []),
                threads=self.args.child_threads,
            )
            kids.append(Child(name, argv, self.log))
        self.children.extend(kids)
        timed_out = wait_children(kids, deadline + 2.0)
        errors = 0
        for kid in kids:
            res = read_json(self.out / f"{kid.label}.json")
            if res is None:
                res = {"status": "error", "error": "no result file", "output_tail": list(kid.tail)}
            if timed_out[kid.label]:
                res["status"] = "error"
                res.setdefault("errors", {})["timeout"] = "killed at the deadline"
            if res.get("status") != "ok":
                errors += 1
                if res.get("status") == "running":
                    res["status"] = "error"
                    res.setdefault("errors", {})["exit"] = f"exited {kid.proc.returncode} mid-run"
                res.setdefault("output_tail", list(kid.tail)[-10:])
            res["returncode"] = kid.proc.returncode
            record["results"][kid.label] = res
        record["seconds"] = round(time.time() - t, 2)
        record["status"] = "ok" if errors == 0 else "error"
        if errors:
            record["error"] = f"{errors} of {len(kids)} presets had errors"
        self.log(f"stage presets: {record['status']} in {record['seconds']:.1f} s")

    def run(self) -> None:
        self.log(
            f"gpu_report: device {self.args.device}, budget {self.args.budget_seconds:.0f} s, "
            f"presets {','.join(self.presets)}, out {self.out}, work {self.work}"
        )
        self.save()
        for name in STAGES[:-1]:
            if name in self.skip:
                self.summary["stages"][name] = {"status": "skipped", "reason": "--skip"}
            elif name == "graphs" and self.args.device != "cuda" and not self.args.graphs_on_cpu:
                self.summary["stages"][name] = {
                    "status": "skipped",
                    "reason": f"CUDA graphs need --device cuda (device is {self.args.device})",
                }
            else:
                try:
                    self.run_stage(name)
                except Exception as exc:  # noqa: BLE001 - the next stage still runs
                    self.summary["stages"][name] = {"status": "error", "error": error_text(exc)}
            if name == "environment" and name in self.summary["stages"]:
                env = self.summary["stages"][name]
                with contextlib.suppress(OSError):
                    write_json(self.out / "environment.json", env)
            self.save()
        if "presets" in self.skip:
            self.summary["stages"]["presets"] = {"status": "skipped", "reason": "--skip"}
        else:
            try:
                self.run_presets()
            except Exception as exc:  # noqa: BLE001
                self.summary["stages"]["presets"] = {"status": "error", "error": error_text(exc)}
        self.save()

    def close(self) -> None:
        for c in self.children:
            with contextlib.suppress(Exception):
                c.stop()
        for record in self.summary["stages"].values():
            if record.get("status") == "running":  # interrupted: keep what was written
                record["status"] = "error"
                record["error"] = "interrupted"
        presets = self.summary["stages"].get("presets") or {}
        if presets.get("error") == "interrupted":
            for name in self.presets:
                res = read_json(self.out / f"{name}.json")
                if res is not None:
                    res.setdefault("errors", {})["interrupted"] = "the report was interrupted"
                    presets.setdefault("results", {})[name] = res
        self.summary["total_seconds"] = round(time.time() - self.t0, 2)
        self.save()
        if not self.args.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)
        table = format_table(self.summary)
        with contextlib.suppress(OSError), open(self.out / "report.log", "a") as f:
            f.write(table + "\n")
        print(table, flush=True)


# ----------------------------------------------------------------------------------------
# the table


def _fmt(x: Any, spec: str = ".3g") -> str:
    if x is None:
        return "-"
    try:
        return format(x, spec)
    except (TypeError, ValueError):
        return str(x)


def _stage_note(name: str, st: dict[str, Any]) -> str:
    r = st.get("result") or {}
    if st.get("status") == "skipped":
        return st.get("reason") or r.get("skipped", "")
    if st.get("error"):
        return str(st["error"])[:90]
    if name == "environment":
        gpu = r.get("device_name") or "no GPU"
        return f"torch {r.get('torch')}, cuda {r.get('cuda_available')}, {gpu}"
    if name == "correctness":
        return (
            f"cpu vs {r.get('device')}: max|dw| {_fmt(r.get('max_abs_diff'), '.2e')} after "
            f"{r.get('meta_iters')} meta-its"
        )
    if name == "bench":
        return (
            f"library/plain: train {_fmt(r.get('train_speedup'), '.2f')}x, "
            f"eval {_fmt(r.get('eval_speedup'), '.2f')}x, "
            f"sine eval {_fmt(r.get('sine_eval_speedup'), '.2f')}x"
        )
    if name == "graphs":
        parts = []
        for key, c in (r.get("cases") or {}).items():
            if "error" in c:
                parts.append(f"{key}: error")
            else:
                parts.append(
                    f"b{c['batch']} eager {c['eager_ms']:.3f} / graph {c['graph_ms']:.3f} ms "
                    f"({c['speedup_graph_vs_eager_library']:.2f}x, "
                    f"|dw| {c['max_abs_diff_graph_vs_eager_capturable']:.0e})"
                )
        dry = " (dry run on CPU)" if r.get("dry_run_without_cuda") else ""
        return "; ".join(parts) + dry
    if name == "presets":
        return f"{len(st.get('results') or {})} presets"
    return ""


def _eval_cell(e: dict[str, Any] | None) -> str:
    if not e:
        return "-"
    if "skipped" in e:
        return "n/a"
    if "error" in e:
        return "error"
    if e.get("accuracy") is not None:
        return f"{e['accuracy']:.4f} +- {_fmt(e.get('ci95'), '.4f')} ({e.get('tasks')})"
    if e.get("loss_after") is not None:
        return f"mse {e['loss_after']:.4f} +- {_fmt(e.get('ci95'), '.4f')} ({e.get('tasks')})"
    return f"- ({e.get('tasks')})"


def format_table(summary: dict[str, Any]) -> str:
    stages = summary.get("stages", {})
    env = (stages.get("environment") or {}).get("result") or {}
    lines = [
        "",
        "=" * 100,
        f"gpu_report summary: device {summary.get('device')} "
        f"({env.get('device_name') or 'no GPU'}), {summary.get('total_seconds')} s of "
        f"{summary.get('budget_seconds')} s budget",
        "-" * 100,
        f"{'stage':12s} {'status':8s} {'seconds':>8s}  note",
    ]
    for name in STAGES:
        st = stages.get(name)
        if st is None:
            lines.append(f"{name:12s} {'not run':8s} {'-':>8s}")
            continue
        secs = _fmt(st.get("seconds"), ".1f")
        lines.append(f"{name:12s} {st.get('status', '?'):8s} {secs:>8s}  {_stage_note(name, st)}")
    results = (stages.get("presets") or {}).get("results") or {}
    if results:
        lines.append("-" * 100)
        lines.append(
            f"{'preset':22s} {'iterations':>18s} {'it/s':>8s}  {'transductive':28s} "
            "non-transductive"
        )
        for name, r in results.items():
            tr = r.get("train") or {}
            done, total = r.get("iterations_done"), r.get("preset_meta_iters")
            its = f"{_fmt(done, 'd')}/{_fmt(total, 'd')}"
            if tr.get("stopped"):
                its += "*"
            rate = _fmt(tr.get("meta_iters_per_s"), ".2f")
            ev = r.get("eval") or {}
            status = "" if r.get("status") == "ok" else f"  [{r.get('status')}]"
            lines.append(
                f"{name:22s} {its:>18s} {rate:>8s}  {_eval_cell(ev.get('transductive')):28s} "
                f"{_eval_cell(ev.get('non_transductive'))}{status}"
            )
        if any((r.get("train") or {}).get("stopped") for r in results.values()):
            lines.append("(* training stopped at its deadline before the planned iterations)")
    lines.append("=" * 100)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="results folder (kept small)")
    p.add_argument("--budget-seconds", type=float, default=480.0)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--presets", default=DEFAULT_PRESETS, help="comma-separated preset names")
    p.add_argument("--skip", default="", help=f"comma-separated stages to skip: {STAGES}")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads of stages 1-4 (cuda 4, cpu 1)"
    )
    p.add_argument(
        "--child-threads", type=int, default=None, help="torch threads per preset (cuda 2, cpu 1)"
    )
    p.add_argument(
        "--train-share", type=float, default=0.6, help="share of a preset's time for training"
    )
    p.add_argument("--keep-work", action="store_true", help="keep run folders (work dir)")
    p.add_argument(
        "--graphs-on-cpu",
        action="store_true",
        help="run stage 4's code on CPU without capture (tests the plumbing)",
    )
    # hidden: the children
    p.add_argument("--stage", choices=list(STAGE_FUNCS), help=argparse.SUPPRESS)
    p.add_argument("--stage-out", help=argparse.SUPPRESS)
    p.add_argument("--single-preset", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cpu = args.device == "cpu"
    if args.threads is None:
        args.threads = 1 if cpu else 4
    if args.child_threads is None:
        args.child_threads = 1 if cpu else 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stage:
        return run_stage_child(args)
    if args.single_preset:
        return run_single_preset(args)
    orch = Orchestrator(args)
    interrupted: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        orch.run()
    except KeyboardInterrupt:
        orch.summary["interrupted"] = f"signal {interrupted[0]}" if interrupted else "Ctrl-C"
        orch.log("interrupted: stopping children, writing what we have")
    except Exception as exc:  # noqa: BLE001 - the table is printed whatever happened
        orch.summary["error"] = error_text(exc)
        orch.summary["traceback"] = traceback.format_exc()
        orch.log(f"orchestrator error: {error_text(exc)}")
    finally:
        orch.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
