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
    report = bench.format_report(result)
    assert "library/plain" in report and result["machine"]["cpu"] in report
    assert "train fresh" in report and "2 task workers" in report and "sine eval" in report
    assert "round 2" in err.getvalue()
    assert result["machine"]["threads"] == 1
