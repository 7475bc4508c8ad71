"""The benchmark: its plain loop is the reference (which the library is tested equal to, so the
ratio is fair), it refuses to run without real Omniglot, and a tiny run produces a complete
report."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from metatrain import Config, bench, cli, reference
from metatrain.data import ClassSplits, TaskSampler, TensorClassDataset, omniglot_available

DATA = Path(os.environ.get("METATRAIN_DATA") or Path(__file__).resolve().parents[3] / "shared/data")


def synthetic_splits(classes: int = 10, per_class: int = 20, size: int = 8) -> ClassSplits:
    g = np.random.default_rng(5)
    protos = g.random((classes, 1, 1, size, size)) > 0.5
    flips = g.random((classes, per_class, 1, size, size)) < 0.1
    storage = torch.from_numpy((protos ^ flips).astype(np.uint8) * 255)
    view = TensorClassDataset(storage, range(classes), [f"c{i}" for i in range(classes)])
    return ClassSplits(train=view, validation=view, test=view)


def small_config(**changes) -> Config:
    """The bench preset's algorithm on 8x8 images."""
    base = bench.bench_config().to_dict()
    base.update(image_size=8, eval_inner_iters=6, inner_lr=0.01)
    base.update(changes)
    return Config.from_dict(base)


def test_the_plain_loop_is_the_reference_with_a_fresh_adam_per_task(monkeypatch):
    # The plain side is metatrain.reference (which tests/metatrain/test_reference.py holds the
    # library to), starting each task from a fresh Adam as a loop written the usual way does,
    # whether or not the library's side chains Adam's moments.
    config = small_config()
    assert config.keep_adam_state
    splits = synthetic_splits()
    calls: list[Config] = []
    real = reference.reptile_meta_step

    def spy(model, optimizer, sample_task, cfg, step_size, rng):
        calls.append(cfg)
        return real(model, optimizer, sample_task, cfg, step_size, rng)

    monkeypatch.setattr(reference, "reptile_meta_step", spy)
    trainer = bench._PlainTrainer(config, splits, torch.device("cpu"))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    wall, cpu = trainer.run(2)
    assert wall > 0 and cpu > 0
    assert [c.keep_adam_state for c in calls] == [False, False]
    assert calls[0] == config.replace(keep_adam_state=False)
    moved = zip(before, trainer.model.parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in moved)  # the steps did change the weights
    evaluator = bench._PlainEvaluator(
        trainer.model,
        config,
        lambda rng: TaskSampler(splits.test, config.ways, config.shots, config.queries, rng),
        torch.device("cpu"),
    )
    assert not evaluator.config.keep_adam_state
    assert evaluator.run(2)[0] > 0


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
