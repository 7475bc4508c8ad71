"""The benchmark: its plain loop does the same work as the library (so the ratio is fair), it
refuses to run without real Omniglot, and a tiny run produces a complete report."""

from __future__ import annotations

import copy
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from metatrain import Config, bench, cli, preset
from metatrain.algorithms import Learner, Reptile
from metatrain.data import (
    ClassSplits,
    SineTaskSampler,
    TaskSampler,
    TensorClassDataset,
    omniglot_available,
)
from metatrain.evaluate import run_evaluation
from metatrain.models import build_model

DATA = Path(os.environ.get("METATRAIN_DATA") or Path(__file__).resolve().parents[3] / "shared/data")


def synthetic_splits(classes: int = 10, per_class: int = 20, size: int = 8) -> ClassSplits:
    g = np.random.default_rng(5)
    protos = g.random((classes, 1, 1, size, size)) > 0.5
    flips = g.random((classes, per_class, 1, size, size)) < 0.1
    storage = torch.from_numpy((protos ^ flips).astype(np.uint8) * 255)
    view = TensorClassDataset(storage, range(classes), [f"c{i}" for i in range(classes)])
    return ClassSplits(train=view, validation=view, test=view)


def small_config(**changes) -> Config:
    """The bench preset's algorithm on 8x8 images, with a fresh Adam per task on both sides."""
    base = bench.bench_config().to_dict()
    base.update(image_size=8, keep_adam_state=False, eval_inner_iters=6, inner_lr=0.01)
    base.update(changes)
    return Config.from_dict(base)


def test_the_plain_meta_step_computes_the_library_reptile_step():
    config = small_config()
    splits = synthetic_splits()
    model = build_model(config, generator=torch.Generator().manual_seed(0))
    plain_model = copy.deepcopy(model)

    rng_lib, rng_plain = np.random.default_rng(1), np.random.default_rng(1)
    lib_sampler = TaskSampler(splits.train, config.ways, config.train_shots, 0, rng_lib)
    plain_sampler = TaskSampler(splits.train, config.ways, config.train_shots, 0, rng_plain)
    reptile = Reptile(Learner.from_config(model, config), config)
    for step_size in (1.0, 0.5):
        lib_metrics = reptile.step(lib_sampler.sample, step_size, rng_lib)
        plain_loss = bench.plain_meta_step(
            plain_model, plain_sampler.sample, config, step_size, rng_plain
        )
        assert plain_loss == pytest.approx(lib_metrics["inner_loss"], rel=1e-4)
    for a, b in zip(model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    initial = build_model(config, generator=torch.Generator().manual_seed(0))
    moved = zip(model.parameters(), initial.parameters(), strict=True)
    assert any(not torch.equal(a, c) for a, c in moved)  # the step did change the weights


def library_evaluation(model, config, sample, tasks, rng, **options):
    """The library's transductive test evaluation of a copy of ``model``."""
    learner = Learner.from_config(copy.deepcopy(model), config)
    return run_evaluation(
        learner, config, sample, tasks, rng, split="test", transductive=True, **options
    )


def test_the_plain_evaluation_matches_the_library_task_by_task():
    config = small_config()
    splits = synthetic_splits()
    model = build_model(config, generator=torch.Generator().manual_seed(3))
    rng_lib, rng_plain = np.random.default_rng(2), np.random.default_rng(2)
    lib_sampler = TaskSampler(splits.test, config.ways, config.shots, config.queries, rng_lib)
    plain_sampler = TaskSampler(splits.test, config.ways, config.shots, config.queries, rng_plain)
    tasks = 6
    result = library_evaluation(model, config, lib_sampler.sample, tasks, rng_lib)
    plain = [
        bench.plain_eval_task(model, plain_sampler.sample(), config, rng_plain)
        for _ in range(tasks)
    ]
    assert result.accuracy == pytest.approx(sum(plain) / tasks)
    assert rng_lib.random() == rng_plain.random()  # both consumed the same random numbers


@pytest.mark.parametrize(("stack_tasks", "rel"), [(False, 1e-6), (True, 1e-4)])
def test_the_plain_sine_evaluation_matches_the_library_task_by_task(stack_tasks, rel):
    # A low step size: from a random init, SGD at the preset's 0.02 diverges on a few tasks,
    # where rounding (stacked products) decides how far.
    config = preset("sine", inner_lr=0.005)
    model = build_model(config, generator=torch.Generator().manual_seed(3))
    rng_lib, rng_plain = np.random.default_rng(2), np.random.default_rng(2)
    lib_sampler, plain_sampler = SineTaskSampler(rng_lib, 10), SineTaskSampler(rng_plain, 10)
    tasks = 12
    result = library_evaluation(
        model, config, lib_sampler.sample, tasks, rng_lib, stack_tasks=stack_tasks
    )
    plain = [
        bench.plain_sine_eval_task(model, plain_sampler.sample(), config, rng_plain)
        for _ in range(tasks)
    ]
    assert result.loss_after == pytest.approx(sum(plain) / tasks, rel=rel)
    assert rng_lib.random() == rng_plain.random()  # both consumed the same random numbers


def test_bench_without_omniglot_exits_2_naming_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("METATRAIN_DATA", str(tmp_path))
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["bench", "--iterations", "1"], out=out, err=err)
    assert code == 2
    assert out.getvalue() == ""
    assert len(err.getvalue().strip().splitlines()) == 1
    line = err.getvalue().strip()
    assert "Omniglot folder does not exist" in line and str(tmp_path / "omniglot") in line


def test_bench_without_metatrain_data_says_to_set_it(monkeypatch):
    monkeypatch.delenv("METATRAIN_DATA", raising=False)
    err = io.StringIO()
    assert cli.main(["bench"], out=io.StringIO(), err=err) == 2
    assert "METATRAIN_DATA" in err.getvalue().strip().splitlines()[-1]


def test_machine_info_names_cpu_torch_threads_and_device():
    info = bench.machine_info(torch.device("cpu"))
    assert info["torch"] == torch.__version__
    assert info["threads"] == torch.get_num_threads()
    assert info["device"] == "cpu" and info["cpu"] and info["cores"] >= 1


def test_cpu_times_reads_steal_and_the_total_from_proc_stat_text():
    text = "cpu  100 5 50 800 10 1 2 32 7 0\ncpu0 50 2 25 400 5 0 1 16 3 0\n"
    # guest time (7) is already inside user: not added to the total again
    assert bench.cpu_times(text) == (32, 100 + 5 + 50 + 800 + 10 + 1 + 2 + 32)


@pytest.mark.parametrize("text", ["", "intr 5 6 7\n", "cpu 1 2 3 4\n", "cpu 1 2 3 4 5 6 7 x\n"])
def test_cpu_times_is_none_without_a_readable_steal_column(text):
    assert bench.cpu_times(text) is None


def test_steal_share_is_the_steal_part_of_the_time_between_two_readings():
    assert bench.steal_share((10, 1000), (60, 1200)) == 0.25
    assert bench.steal_share(None, (60, 1200)) is None
    assert bench.steal_share((10, 1000), (10, 1000)) is None


def test_cpu_times_reads_this_machine_where_it_is_linux():
    ticks = bench.cpu_times()
    if not os.path.exists("/proc/stat"):
        assert ticks is None
        return
    assert ticks is not None and 0 <= ticks[0] <= ticks[1] and ticks[1] > 0


def _section(unit: str, lib_rates: list[float], plain_rates: list[float], steal: float) -> dict:
    def side(rates: list[float]) -> dict:
        return {
            "count": 4,
            f"{unit}_per_s": sum(rates) / len(rates),
            f"{unit}_per_cpu_s": sum(rates) / len(rates),
            "round_rates": rates,
        }

    return {
        unit: 4,
        "library": side(lib_rates),
        "plain": side(plain_rates),
        "speedup": 2.0,
        "speedup_cpu": 2.0,
        "speedup_round_median": 1.9,
        "steal_share": steal,
        "library_workers": 2,
    }


def _report(steal: float) -> str:
    machine = bench.machine_info(torch.device("cpu"))
    machine["load_average_at_end"] = None
    result = {
        "machine": machine,
        "workload": bench.workload_info(bench.bench_config()),
        "train": _section("iterations", [4.0, 3.6], [2.0, 2.0], steal),
        "evaluate": _section("tasks", [5.0, 5.0], [2.5, 2.4], 0.01),
    }
    return bench.format_report(result)


def test_the_report_warns_when_the_hypervisor_took_the_cores():
    report = _report(steal=0.12)
    assert "median of the per-round ratios: training 1.90x, evaluation 1.90x" in report
    assert "hypervisor steal (share of all CPU time, /proc/stat): training 12%" in report
    assert "note: the hypervisor took up to 12% of these cores' time" in report


def test_the_report_has_no_steal_warning_on_a_quiet_host():
    report = _report(steal=0.01)
    assert "training 1%" in report and "note: the hypervisor" not in report


@pytest.mark.slow
@pytest.mark.skipif(not omniglot_available(DATA / "omniglot"), reason="no Omniglot data")
def test_a_tiny_bench_reports_both_sides_and_their_ratio(monkeypatch):
    monkeypatch.setenv("METATRAIN_DATA", str(DATA))
    out, err = io.StringIO(), io.StringIO()
    argv = ["bench", "--iterations", "2", "--eval-tasks", "2", "--rounds", "2", "--json"]
    argv += ["--threads", "1", "--workers", "2"]
    assert cli.main(argv, out=out, err=err) == 0, err.getvalue()
    result = json.loads(out.getvalue())
    assert {"machine", "workload", "train", "evaluate"} <= result.keys()
    assert result["workload"]["meta_batch"] == 5 and result["workload"]["inner_iters"] == 5
    argv_workers = result["machine"]["library_workers"]
    assert argv_workers == 2
    assert result["train"]["library_workers"] == 1  # chained Adam: tasks in sequence
    assert result["train_fresh_adam"]["library_workers"] == 2
    for key, unit in (
        ("train", "iterations"),
        ("train_fresh_adam", "iterations"),
        ("evaluate", "tasks"),
        ("evaluate_sine", "tasks"),
    ):
        section = result[key]
        assert section[unit] == 2
        assert section["library"]["count"] == section["plain"]["count"] == 2
        assert len(section["library"]["round_rates"]) == 2
        ratio = section["library"][f"{unit}_per_s"] / section["plain"][f"{unit}_per_s"]
        assert section["speedup"] == pytest.approx(ratio, rel=1e-2)
        assert section["library"]["seconds"] > 0 and section["speedup"] > 0
        rounds = zip(
            section["library"]["round_rates"], section["plain"]["round_rates"], strict=True
        )
        ratios = sorted(a / b for a, b in rounds)
        assert section["speedup_round_median"] == pytest.approx(sum(ratios) / 2, rel=1e-2)
        steal = section["steal_share"]
        assert steal is None if not os.path.exists("/proc/stat") else 0 <= steal <= 1
    report = bench.format_report(result)
    assert "library/plain" in report and result["machine"]["cpu"] in report
    assert "train fresh" in report and "2 task workers" in report and "sine eval" in report
    assert "round 2" in err.getvalue()
    assert result["machine"]["threads"] == 1
