#!/usr/bin/env python3
"""Runs per GPU-hour with K runs sharing one GPU, as `run_worker --runs-per-gpu K` runs them.

    python tools/runs_per_gpu.py [--preset omniglot-5way-1shot] [--k 1,2,4,8] [--seconds 60]
        [--device cuda] [--json]

For each K, starts K independent training processes (`python -m metatrain train`, one run
each, different seeds, periodic validation off) on the device, waits until every one has
finished its warm-up (the first `--warmup` meta-iterations: data loading, CUDA graph capture),
then counts the meta-iterations all K complete in `--seconds`, read from their metrics logs.
Prints per K: meta-iterations per second per run and in total, and runs per GPU-hour (the
total rate over the preset's meta_iters), with the GPU's peak memory used (NVML) when there is
one. The processes are stopped and their folders deleted afterwards.

Runs on a CPU too (`--device cpu`), which is how its tests check it; the figures that matter
come from a GPU, and go to docs/benchmarks.md with the device, versions and date.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python tools/runs_per_gpu.py` puts tools/ first
    sys.path.insert(0, str(ROOT))

import metatrain  # noqa: E402 (needs the path above)
from webapp.experiments.devices import gpu_stats  # noqa: E402


@dataclass
class Measurement:
    k: int
    seconds: float
    iterations: list[int]  # per run, within the window
    per_run: float  # meta-iterations per second, mean over the runs
    total: float  # meta-iterations per second, all runs together
    runs_per_hour: float
    peak_memory_mib: int | None


def iterations_done(run_dir: Path) -> int:
    """Meta-iterations a run has logged (metrics.jsonl, one line each, flushed per line)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum(
        1 for line in path.read_text(errors="replace").splitlines() if '"inner_loss"' in line
    )


def measure(
    k: int,
    *,
    preset: str,
    seconds: float,
    warmup: int,
    device: str,
    work: Path,
    timeout: float,
) -> Measurement:
    meta_iters = metatrain.preset(preset).meta_iters
    runs = [work / f"k{k}-run{i}" for i in range(k)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = []
    for i, run_dir in enumerate(runs):
        argv = [sys.executable, "-m", "metatrain", "train", "--preset", preset]
        argv += ["--seed", str(i), "--set", "validation_interval=0", "--device", device]
        argv += ["--threads", "1", "--workers", "1", "--out", str(run_dir)]
        log = open(work / f"k{k}-run{i}.log", "wb")  # noqa: SIM115 (closed with the process)
        procs.append(
            (
                subprocess.Popen(
                    argv,
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                ),
                log,
            )
        )
    gpu_index = 0 if device.startswith("cuda") else None
    peak: int | None = None
    try:
        deadline = time.monotonic() + timeout
        while min(iterations_done(r) for r in runs) < warmup:
            for proc, _ in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a training process exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the runs did not finish {warmup} warm-up iterations")
            time.sleep(0.2)
        start = [iterations_done(r) for r in runs]
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            stats = gpu_stats(gpu_index) if gpu_index is not None else None
            if stats is not None:
                peak = max(peak or 0, stats["memory_used_mib"])
            time.sleep(min(1.0, seconds / 10))
        elapsed = time.monotonic() - t0
        done = [iterations_done(r) - s for r, s in zip(runs, start, strict=True)]
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            log.close()
    total = sum(done) / elapsed
    return Measurement(
        k=k,
        seconds=round(elapsed, 2),
        iterations=done,
        per_run=round(total / k, 3),
        total=round(total, 3),
        runs_per_hour=round(total * 3600 / meta_iters, 3),
        peak_memory_mib=peak,
    )


def table(measurements: list[Measurement], preset: str, device: str) -> str:
    lines = [
        f"{preset} on {device}, periodic validation off, final evaluation not counted",
        "| K | meta-it/s per run | meta-it/s in total | runs per GPU-hour | peak memory |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m in measurements:
        memory = f"{m.peak_memory_mib / 1024:.1f} GiB" if m.peak_memory_mib else "-"
        lines.append(
            f"| {m.k} | {m.per_run:.2f} | {m.total:.2f} | {m.runs_per_hour:.2f} | {memory} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="omniglot-5way-1shot")
    parser.add_argument("--k", default="1,2,4,8", help="runs sharing the device, comma-separated")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window per K")
    parser.add_argument("--warmup", type=int, default=50, help="iterations before measuring")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--timeout", type=float, default=600.0, help="longest warm-up wait")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    try:
        ks = [int(k) for k in args.k.split(",")]
    except ValueError:
        parser.error(f"--k {args.k!r}: comma-separated whole numbers, e.g. 1,2,4,8")
    if not ks or min(ks) < 1:
        parser.error("--k: each K must be 1 or more")
    work = Path(tempfile.mkdtemp(prefix="runs-per-gpu-"))
    try:
        measurements = [
            measure(
                k,
                preset=args.preset,
                seconds=args.seconds,
                warmup=args.warmup,
                device=args.device,
                work=work,
                timeout=args.timeout,
            )
            for k in ks
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(
            json.dumps(
                {
                    "preset": args.preset,
                    "device": args.device,
                    "measurements": [asdict(m) for m in measurements],
                }
            )
        )
    else:
        print(table(measurements, args.preset, args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
