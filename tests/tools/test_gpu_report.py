"""tools/gpu_report.py, the one-shot GPU report: its planning, its table, the CPU dry run of
the CUDA-graph stage, killing an overrunning child, and a whole run on CPU on real Omniglot."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from metatrain.data import omniglot_available

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "gpu_report.py"
DATA = Path(os.environ.get("METATRAIN_DATA") or ROOT.parent / "shared/data")


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_report", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_report = _load_script()


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- planning --------------------------------------------------------------------------------


def test_plan_keeps_the_presets_validation_interval_when_it_fits():
    plan = gpu_report.plan_training(
        meta_iters=100_000,
        rate=10.0,
        train_budget=100.0,
        validation_interval=100,
        validation_tasks=10,
        eval_task_seconds=0.01,
    )
    # 1,000 iterations would fit; their 10 validations take 1 s, which comes off the budget
    assert plan["validation_interval"] == 100
    assert plan["meta_iters"] == 990
    assert plan["validations_expected"] == 9


def test_plan_raises_the_interval_when_validation_would_take_over_a_tenth():
    plan = gpu_report.plan_training(
        meta_iters=100_000,
        rate=30.0,
        train_budget=200.0,
        validation_interval=1000,
        validation_tasks=200,
        eval_task_seconds=0.06,
    )
    # 6 validations of 12 s = 72 s > 20 s: one validation fits, at the end
    assert plan["meta_iters"] == math.floor(30 * (200 - 12))
    assert plan["validation_interval"] == plan["meta_iters"]
    assert plan["validations_expected"] == 1
    assert plan["validation_reason"].startswith("raised")


def test_plan_turns_validation_off_when_one_would_take_over_a_tenth():
    plan = gpu_report.plan_training(
        meta_iters=100_000,
        rate=8.0,
        train_budget=30.0,
        validation_interval=10,
        validation_tasks=200,
        eval_task_seconds=0.2,
    )
    assert plan["validation_interval"] == 0 and plan["validations_expected"] == 0
    assert plan["meta_iters"] == 240


def test_plan_never_exceeds_the_presets_iterations_nor_goes_below_one():
    fast = gpu_report.plan_training(
        meta_iters=300,
        rate=1000.0,
        train_budget=60.0,
        validation_interval=0,
        validation_tasks=1,
        eval_task_seconds=0.0,
    )
    assert fast["meta_iters"] == 300
    slow = gpu_report.plan_training(
        meta_iters=300,
        rate=0.001,
        train_budget=1.0,
        validation_interval=0,
        validation_tasks=1,
        eval_task_seconds=0.0,
    )
    assert slow["meta_iters"] == 1


def test_stage_caps_leave_out_graphs_on_cpu_and_skipped_stages():
    caps = gpu_report.stage_caps(480, "cuda", set())
    assert set(caps) == {"environment", "correctness", "bench", "graphs"}
    assert sum(caps.values()) < 0.4 * 480
    assert "graphs" not in gpu_report.stage_caps(480, "cpu", set())
    assert "graphs" in gpu_report.stage_caps(480, "cpu", set(), graphs_on_cpu=True)
    assert "bench" not in gpu_report.stage_caps(480, "cuda", {"bench"})


# --- the table -------------------------------------------------------------------------------


def test_the_table_copes_with_missing_and_failed_parts():
    summary = {
        "device": "cuda",
        "budget_seconds": 480,
        "total_seconds": 12.5,
        "stages": {
            "environment": {"status": "error", "error": "timed out", "seconds": 20.0},
            "correctness": {"status": "ok", "seconds": 3.0, "result": {"max_abs_diff": None}},
            "graphs": {
                "status": "ok",
                "result": {"cases": {"batch_10": {"error": "capture failed"}}},
            },
            "presets": {
                "status": "error",
                "results": {
                    "omniglot-5way-1shot": {
                        "status": "ok",
                        "iterations_done": 7,
                        "preset_meta_iters": 100_000,
                        "train": {"meta_iters_per_s": 3.0, "stopped": True},
                        "eval": {
                            "transductive": {"accuracy": 0.5, "ci95": 0.1, "tasks": 4},
                            "non_transductive": {"error": "boom"},
                        },
                    },
                    "bogus": {"status": "error", "errors": {"train": "ConfigError"}},
                },
            },
        },
    }
    table = gpu_report.format_table(summary)
    assert "timed out" in table and "not run" in table  # bench never ran
    assert "7/100000*" in table and "0.5000 +- 0.1000 (4)" in table
    assert "bogus" in table and "[error]" in table
    assert table.rstrip().endswith("=" * 100)


# --- stages in-process -----------------------------------------------------------------------


def test_the_graph_stage_dry_run_on_cpu_matches_eager_exactly():
    # On CPU nothing is captured ("replay" is the eager step): this checks the bookkeeping,
    # in particular that resetting weights and Adam state in place equals a fresh start.
    case = gpu_report.graph_case(torch, torch.device("cpu"), 5, steps=10, check_steps=3)
    assert case["dry_run_without_cuda"] and case["batch"] == 5
    assert case["weights_moved_max_abs"] > 0
    assert case["max_abs_diff_graph_vs_eager_capturable"] == 0.0
    assert case["max_abs_diff_graph_vs_eager_library"] == 0.0
    assert case["within_tolerance"]
    for variant in ("eager_library", "eager_capturable", "graph"):
        assert case["timing"][variant]["steps"] == 10
        assert case["timing"][variant]["wall_ms_per_step"] > 0
    assert case["speedup_graph_vs_eager_library"] > 0


def test_the_bench_stage_records_run_bench_and_its_report(monkeypatch):
    import metatrain.bench as bench

    calls = {}

    def fake_run_bench(**kwargs):
        calls.update(kwargs)
        kwargs["log"]("a line")
        return {
            "train": {"speedup": 1.5},
            "evaluate": {"speedup": 2.0},
            "evaluate_sine": {"speedup": 9.0},
        }

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    monkeypatch.setattr(bench, "format_report", lambda result: "REPORT")
    args = gpu_report.parse_args(["--out", "x", "--device", "cpu"])
    args.deadline = time.time() + 60
    result = gpu_report.stage_bench(args, lambda partial: None)
    assert calls["compute"].device == "cpu" and calls["compute"].workers == "auto"
    assert calls["rounds"] == 2 and 0.5 <= calls["seconds"] < 15
    assert result["train_speedup"] == 1.5 and result["eval_speedup"] == 2.0
    assert result["sine_eval_speedup"] == 9.0
    assert result["report"] == "REPORT" and result["log"] == ["a line"]


def test_an_overrunning_child_is_killed_and_its_output_kept(tmp_path):
    log = gpu_report.Log(time.time(), tmp_path / "log.txt")
    code = "import time; print('started', flush=True); time.sleep(60)"
    child = gpu_report.Child("sleeper", [sys.executable, "-c", code], log)
    t = time.time()
    timed_out = gpu_report.wait_children([child], time.time() + 3.0)
    assert timed_out == {"sleeper": True}
    assert child.proc.returncode is not None and time.time() - t < 15
    assert "started" in child.tail
    assert "[sleeper] started" in (tmp_path / "log.txt").read_text()


# --- the whole script on CPU -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.serial  # its stages share a 40 s budget: alone on the machine, not beside others
@pytest.mark.skipif(not omniglot_available(DATA / "omniglot"), reason="no Omniglot data")
def test_a_short_cpu_run_writes_every_result_and_ends_with_the_table(tmp_path):
    # ~40 s: environment, correctness (CPU vs CPU on Omniglot), graphs skipped (no CUDA), bench
    # skipped (tested above and in tests/metatrain/test_bench.py), then the sine preset and an
    # unknown one in parallel. A full Omniglot preset is left out here: its probe alone can take
    # most of a short budget on a loaded 2-core machine, and what it would add (a classification
    # evaluation) is the same code the sine preset runs with another loss.
    out = tmp_path / "report"
    budget = 40
    env = dict(os.environ, METATRAIN_DATA=str(DATA))
    argv = [sys.executable, str(SCRIPT), "--out", str(out), "--device", "cpu"]
    argv += ["--budget-seconds", str(budget), "--skip", "bench"]
    argv += ["--presets", "sine,no-such-preset"]
    t = time.time()
    proc = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=budget + 40
    )
    elapsed = time.time() - t
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert elapsed < budget + 10

    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "environment.json",
        "no-such-preset.json",
        "report.log",
        "sine.json",
        "summary.json",
    ]
    summary = json.loads((out / "summary.json").read_text())
    stages = summary["stages"]
    assert [stages[s]["status"] for s in gpu_report.STAGES] == [
        "ok",
        "ok",
        "skipped",
        "skipped",
        "error",  # the unknown preset
    ]
    assert "CUDA" in stages["graphs"]["reason"]
    assert summary["total_seconds"] <= budget + 5
    assert not Path(summary["work_dir"]).exists()  # run folders are gone

    environment = json.loads((out / "environment.json").read_text())["result"]
    assert environment["torch"] == torch.__version__ and environment["cpu_count"] >= 1
    assert environment["omniglot_available"] is True

    correctness = stages["correctness"]["result"]
    assert correctness["cpu_iterations_done"] == correctness["device_iterations_done"] == 3
    assert correctness["max_abs_diff"] == 0.0  # CPU against CPU: bit-identical

    results = stages["presets"]["results"]
    assert results["no-such-preset"]["status"] == "error"
    assert "ConfigError" in results["no-such-preset"]["errors"]["train"]

    sine = json.loads((out / "sine.json").read_text())
    assert sine["status"] == "ok", sine["errors"]
    assert 1 <= sine["iterations_done"] <= 30_000
    regression = sine["eval"]["transductive"]
    assert regression["accuracy"] is None and regression["tasks"] >= 1
    assert 0 < regression["loss_after"] < 100
    assert "skipped" in sine["eval"]["non_transductive"]

    tail = proc.stdout.rstrip().splitlines()
    assert tail[-1] == "=" * 100
    table = "\n".join(tail[-15:])
    assert "gpu_report summary" in table and "sine" in table and "no-such-preset" in table
