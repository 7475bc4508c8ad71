"""What a worker reports about its device (webapp/experiments/devices.py), and the rule that
lets a GPU worker take one more run only while its GPU has memory to spare."""

from __future__ import annotations

import pytest

from webapp.experiments import devices, lifecycle, workers


def test_the_pinned_gpu_comes_from_run_worker_or_cuda_visible_devices(monkeypatch):
    monkeypatch.delenv(devices.GPU_ENV, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert devices.pinned_gpu() is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,4")
    assert devices.pinned_gpu() == 3
    monkeypatch.setenv(devices.GPU_ENV, "1")
    assert devices.pinned_gpu() == 1


def test_without_a_gpu_a_worker_reports_its_cores_and_load():
    pytest.importorskip("pynvml")
    if devices.gpu_stats(0) is not None:
        pytest.skip("this host has an NVIDIA GPU: its figures are reported instead")
    stats = devices.stats()
    assert set(stats) == {"cpu"}
    assert stats["cpu"]["cores"] >= 1
    assert stats["cpu"]["load1"] is None or stats["cpu"]["load1"] >= 0


@pytest.mark.gpu
def test_a_gpu_worker_reports_name_memory_and_utilisation():
    stats = devices.gpu_stats(0)
    if stats is None:
        pytest.skip("no NVIDIA GPU here")
    assert stats["memory_total_mib"] >= stats["memory_used_mib"] >= 0
    assert 0 <= stats["utilization_percent"] <= 100 and stats["name"]


@pytest.fixture
def holding(owner, make_experiment):
    """A run this worker (w1) already trains."""
    run = make_experiment(owner).runs.get()
    return lifecycle.claim_run(run.pk, worker="w1", device="cuda")


def test_a_worker_with_no_run_always_takes_one(monkeypatch, db):
    monkeypatch.setattr(devices, "free_gpu_memory_bytes", lambda: 0)
    assert workers.has_room_for_another_run("w1")


def test_a_gpu_worker_holding_a_run_takes_another_only_above_the_memory_margin(
    holding, monkeypatch, settings
):
    settings.WORKER_GPU_MEMORY_MARGIN_MB = 2048
    monkeypatch.setattr(devices, "free_gpu_memory_bytes", lambda: 2047 * 2**20)
    assert not workers.has_room_for_another_run("w1")
    monkeypatch.setattr(devices, "free_gpu_memory_bytes", lambda: 2048 * 2**20)
    assert workers.has_room_for_another_run("w1")
    assert workers.has_room_for_another_run("w2")  # another worker holds nothing


def test_a_cpu_worker_is_never_held_back_by_gpu_memory(holding, monkeypatch):
    monkeypatch.setattr(devices, "free_gpu_memory_bytes", lambda: None)
    assert workers.has_room_for_another_run("w1")
