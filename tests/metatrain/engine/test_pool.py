"""Task workers (metatrain.engine.pool): the same numbers as the serial loop, clean failures,
and how many a run starts (metatrain.engine.compute, metatrain.engine.device).

Each test that starts a pool pays for two fresh interpreters importing torch (about 2 s), so
the pools here are few and small.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from metatrain import Compute, Config, evaluate, preset, train
from metatrain.checkpoint import load_checkpoint
from metatrain.engine.compute import resolve_workers
from metatrain.engine.device import cgroup_cpu_limit, usable_cores
from metatrain.engine.learner import Learner
from metatrain.engine.pool import TaskPool, TaskWorkerError
from metatrain.engine.runners import PoolRunner
from metatrain.engine.tasks import score_task, train_task
from metatrain.models import build_model
from tests.metatrain.synthetic import synthetic_splits, tiny_config

train_module = importlib.import_module("metatrain.train")
evaluate_module = importlib.import_module("metatrain.evaluate")
CPU = torch.device("cpu")


@pytest.fixture
def fake_data(monkeypatch):
    splits = synthetic_splits(seed=99)
    monkeypatch.setattr(train_module, "load_class_splits", lambda config: splits)
    monkeypatch.setattr(evaluate_module, "load_class_splits", lambda config: splits)
    return splits


def tiny(**changes) -> Config:
    """More tasks per meta-batch and per evaluation than the shared tiny config: enough to
    split across workers."""
    base = {"queries": 2, "inner_iters": 3, "meta_batch": 3, "meta_iters": 4}
    base |= {"eval_inner_iters": 3, "validation_tasks": 5, "final_eval_tasks": 7}
    return tiny_config(**{**base, **changes})


def _metrics(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [
            {k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in f
            if line.strip()
        ]


def _strip_seconds(record: dict) -> dict:
    if "validation" in record:
        record = {**record, "validation": {**record["validation"], "seconds": None}}
    return record


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.values(), b.values(), strict=True))


@pytest.mark.parametrize(
    "changes",
    [
        {"keep_adam_state": False},  # Reptile, fresh Adam per task: tasks run side by side
        {"keep_adam_state": False, "algorithm": "fomaml", "fomaml_tail_shots": 2},
        {"keep_adam_state": True},  # chained Adam: training serial, validation side by side
    ],
    ids=["reptile", "fomaml", "chained-adam"],
)
def test_training_with_two_workers_gives_bit_identical_weights_and_metrics(
    fake_data, tmp_path, changes
):
    cfg = tiny(**changes)
    serial = train(cfg, tmp_path / "serial", compute=Compute(device="cpu", workers=1))
    parallel = train(cfg, tmp_path / "parallel", compute=Compute(device="cpu", workers=2))
    assert serial.iterations_done == parallel.iterations_done == cfg.meta_iters
    a = load_checkpoint(tmp_path / "serial" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "parallel" / "checkpoint.pt")
    assert _same_weights(a["model"], b["model"])
    if cfg.keep_adam_state:  # otherwise the saved state is never read: every task starts fresh
        states_a, states_b = a["optimizer"]["state"], b["optimizer"]["state"]
        assert states_a.keys() == states_b.keys() and states_a
        for x, y in zip(states_a.values(), states_b.values(), strict=True):
            assert all(torch.equal(x[k], y[k]) for k in x)
    ma = [_strip_seconds(r) for r in _metrics(tmp_path / "serial")]
    mb = [_strip_seconds(r) for r in _metrics(tmp_path / "parallel")]
    assert ma == mb
    assert any("validation" in r for r in ma)  # validation ran, through the pool in b


@pytest.mark.parametrize("transductive", [True, False])
def test_evaluation_with_workers_matches_the_serial_loop_task_for_task(
    fake_data, tmp_path, transductive
):
    cfg = tiny(keep_adam_state=True)
    train(cfg.replace(meta_iters=2), tmp_path, compute=Compute(device="cpu"))  # with Adam state
    serial = evaluate(
        tmp_path, tasks=9, transductive=transductive, compute=Compute(device="cpu", workers=1)
    )
    parallel = evaluate(
        tmp_path, tasks=9, transductive=transductive, compute=Compute(device="cpu", workers=3)
    )
    assert serial.inner_optimizer_state == parallel.inner_optimizer_state == "training"
    assert (serial.accuracy, serial.ci95, serial.tasks) == (
        parallel.accuracy,
        parallel.ci95,
        parallel.tasks,
    )


def test_sine_regression_runs_side_by_side_with_the_same_losses():
    cfg = preset("sine", meta_iters=3, final_eval_tasks=4)
    model = build_model(cfg, torch.Generator().manual_seed(0))
    # One task at a time (stacked, the default for this MLP, would leave the workers unused).
    serial = evaluate(model, cfg, compute=Compute(device="cpu", workers=1, stack_tasks=False))
    parallel = evaluate(model, cfg, compute=Compute(device="cpu", workers=2, stack_tasks=False))
    assert serial.loss_before == parallel.loss_before
    assert serial.loss_after == parallel.loss_after and serial.ci95 == parallel.ci95


def test_a_stop_request_during_parallel_evaluation_keeps_the_finished_tasks(fake_data):
    from metatrain import Reporter

    class StopAfter(Reporter):
        polls = 0

        def should_stop(self) -> bool:
            self.polls += 1
            return self.polls > 4

    cfg = tiny()
    model = build_model(cfg, torch.Generator().manual_seed(0))
    result = evaluate(
        model, cfg, tasks=50, reporter=StopAfter(), compute=Compute(device="cpu", workers=2)
    )
    assert result.stopped and result.tasks == 4
    serial = evaluate(model, cfg, tasks=4, compute=Compute(device="cpu", workers=1))
    assert result.accuracy == serial.accuracy


def test_chained_adam_state_refuses_to_train_tasks_side_by_side():
    cfg = tiny(keep_adam_state=True)
    learner = Learner.from_config(build_model(cfg), cfg)
    runner = PoolRunner(pool=None, learner=learner)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot run side by side"):
        runner.train([], learner.copy_params())


def test_a_failing_or_dead_worker_is_reported_not_waited_for():
    cfg = tiny()
    model = build_model(cfg)
    with TaskPool(model, cfg, 2) as pool:
        assert pool.workers == 2
        bad_task = (torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))  # two tensors
        with pytest.raises(TaskWorkerError, match="failed on job 0"):
            list(pool.run(score_task, [(bad_task, np.zeros((1, 2), dtype=np.int64), True)]))
    with TaskPool(model, cfg, 2) as pool:
        for proc in pool._procs:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        with pytest.raises(TaskWorkerError, match="exited unexpectedly"):
            pool.set_weights([p.detach() for p in model.parameters()])  # sending fails too
    with TaskPool(model, cfg, 2) as pool:
        for proc in pool._procs:
            os.kill(proc.pid, signal.SIGKILL)
        x = torch.zeros(3, 1, 8, 8)
        y = torch.arange(3)
        task = (x, y, x, y)
        with pytest.raises(TaskWorkerError, match="exited unexpectedly"):
            list(pool.run(score_task, [(task, np.zeros((1, 3), dtype=np.int64), True)]))


def test_worker_count_resolution():
    assert resolve_workers("auto", CPU) == usable_cores()
    assert resolve_workers(None, CPU) == usable_cores()
    assert resolve_workers(3, CPU) == 3
    assert resolve_workers(4, torch.device("cuda")) == 1  # one process keeps a GPU busy
    with pytest.raises(ValueError, match="at least 1"):
        resolve_workers(0, CPU)
    with pytest.raises(ValueError, match="at least 2"):
        TaskPool(build_model(tiny()), tiny(), 1)


# --- cores a container may use ----------------------------------------------------------


def _cgroup(tmp_path, membership: str, files: dict[str, str]) -> tuple[str, str]:
    """A fake /sys/fs/cgroup under tmp_path and a fake /proc/self/cgroup."""
    root = tmp_path / "cgroup"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(membership + "\n")
    return str(root), str(proc)


@pytest.mark.parametrize(
    ("membership", "files", "expected"),
    [
        ("0::/", {"cpu.max": "200000 100000"}, 2.0),  # cgroup v2, docker --cpus 2
        ("0::/job/7", {"job/7/cpu.max": "150000 100000"}, 1.5),  # the process's own group
        ("0::/", {"cpu.max": "max 100000"}, None),  # no quota
        (
            "4:cpu,cpuacct:/docker/abc",
            {
                "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000",
                "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
            },
            3.0,
        ),  # cgroup v1
        (
            "4:cpu,cpuacct:/",
            {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"},
            None,
        ),  # v1 without a quota
        ("0::/", {}, None),  # nothing to read
        ("0::/", {"cpu.max": "garbage"}, None),
    ],
)
def test_the_cgroup_cpu_quota_is_read_in_cores(tmp_path, membership, files, expected):
    root, proc = _cgroup(tmp_path, membership, files)
    assert cgroup_cpu_limit(root, proc) == expected


def test_a_container_quota_caps_the_task_workers_auto_starts(monkeypatch):
    import metatrain.engine.device as device

    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(device, "cgroup_cpu_limit", lambda: 2.5)
    assert usable_cores() == 2 and resolve_workers("auto", CPU) == 2
    monkeypatch.setattr(device, "cgroup_cpu_limit", lambda: 0.5)
    assert usable_cores() == 1  # a fraction of a core still runs one
    monkeypatch.setattr(device, "cgroup_cpu_limit", lambda: None)
    assert usable_cores() == 64


def test_the_parent_runs_on_one_thread_while_its_workers_compute(fake_data):
    # A second OpenMP thread in the parent spin-waits after each small op and takes a core
    # from a worker; the parent's own thread count is back once the jobs are done or failed.
    from metatrain.data import TaskSampler

    cfg = tiny()
    model = build_model(cfg)
    sampler = TaskSampler(
        fake_data.test, cfg.ways, cfg.shots, cfg.queries, np.random.default_rng(0)
    )
    order = np.arange(cfg.ways * cfg.shots).reshape(1, -1)
    threads_while_drawing: list[int] = []

    def jobs(n: int):
        for _ in range(n):
            threads_while_drawing.append(torch.get_num_threads())
            yield sampler.sample(), order, True

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with TaskPool(model, cfg, 2) as pool:
            pool.set_weights([p.detach() for p in model.parameters()])
            scores = list(pool.run(score_task, jobs(3)))
            assert len(scores) == 3 and threads_while_drawing == [1, 1, 1]
            assert torch.get_num_threads() == 2
            bad_task = (torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))
            with pytest.raises(TaskWorkerError):
                list(pool.run(score_task, [(bad_task, np.zeros((1, 2), dtype=np.int64), True)]))
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def _minor_faults(pid: int) -> int:
    """Minor page faults of a process so far (Linux: /proc/PID/stat, field 10)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[7])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_workers_keep_freed_memory_instead_of_faulting_it_back_in(monkeypatch):
    # A fresh interpreter's glibc heap is small: each step's 0.5 MB activations were mapped and
    # unmapped every time, about 1,650 page faults per Omniglot training task (11 -> 16.7 ms).
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "999999999")  # a value the user set wins
    config = preset("omniglot-5way-1shot").replace(keep_adam_state=False)
    model = build_model(config, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(50, 1, 28, 28, generator=g)
    task = (x, torch.arange(5).repeat_interleave(10), x[:0], torch.arange(5)[:0])
    order = np.arange(50).reshape(5, 10)
    with TaskPool(model, config, 2) as pool:
        for proc in pool._procs:
            env = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
            assert b"MALLOC_MMAP_THRESHOLD_=33554432" in env
            assert b"MALLOC_TRIM_THRESHOLD_=999999999" in env
        pool.set_weights([p.detach() for p in model.parameters()])
        list(pool.run(train_task, [(task, order)] * 4))  # warm-up: the heap grows once
        before = sum(_minor_faults(p.pid) for p in pool._procs)
        list(pool.run(train_task, [(task, order)] * 10))
        faults = sum(_minor_faults(p.pid) for p in pool._procs) - before
    assert faults / 10 < 200, f"{faults / 10:.0f} page faults per task"
