"""Sine-wave regression tasks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metatrain.data import SineTask, SineTaskSampler


def test_task_shapes_and_dtypes():
    task = SineTaskSampler(np.random.default_rng(0), points=10).sample()
    assert isinstance(task, SineTask)
    assert task.support_x.shape == task.support_y.shape == (10, 1)
    assert task.query_x.shape == task.query_y.shape == (50, 1)
    assert all(t.dtype == torch.float32 for t in task[:4])
    assert isinstance(task.amplitude, float) and isinstance(task.phase, float)


def test_targets_are_amplitude_times_sine_of_x_plus_phase():
    task = SineTaskSampler(np.random.default_rng(1), points=25).sample()
    for x, y in ((task.support_x, task.support_y), (task.query_x, task.query_y)):
        expected = task.amplitude * torch.sin(x.double() + task.phase)
        torch.testing.assert_close(y.double(), expected, rtol=0, atol=1e-5)


def test_query_points_are_a_fixed_grid_over_minus_5_to_5():
    sampler = SineTaskSampler(np.random.default_rng(2), points=5, query_points=21)
    a, b = sampler.sample(), sampler.sample()
    assert torch.equal(a.query_x, b.query_x)
    torch.testing.assert_close(a.query_x[:, 0], torch.linspace(-5, 5, 21))
    assert not torch.equal(a.query_y, b.query_y)


def test_parameters_and_inputs_cover_their_ranges():
    sampler = SineTaskSampler(np.random.default_rng(3), points=10)
    tasks = [sampler.sample() for _ in range(2000)]
    amplitudes = np.array([t.amplitude for t in tasks])
    phases = np.array([t.phase for t in tasks])
    xs = torch.cat([t.support_x for t in tasks]).numpy()
    assert 0.1 <= amplitudes.min() < 0.2 and 4.9 < amplitudes.max() <= 5.0
    assert 0.0 <= phases.min() < 0.05 and 2 * math.pi - 0.05 < phases.max() <= 2 * math.pi
    assert -5.0 <= xs.min() < -4.99 and 4.99 < xs.max() <= 5.0
    assert abs(amplitudes.mean() - 2.55) < 0.15 and abs(xs.mean()) < 0.1


def test_same_seed_same_tasks():
    a = SineTaskSampler(np.random.default_rng(7), points=10)
    b = SineTaskSampler(np.random.default_rng(7), points=10)
    c = SineTaskSampler(np.random.default_rng(8), points=10)
    ta, tb, tc = a.sample(), b.sample(), c.sample()
    assert torch.equal(ta.support_x, tb.support_x) and ta.amplitude == tb.amplitude
    assert ta.phase != tc.phase


def test_it_rejects_no_points():
    with pytest.raises(ValueError, match="points >= 1"):
        SineTaskSampler(np.random.default_rng(0), points=0)


def test_to_moves_tensors_and_keeps_parameters():
    task = SineTaskSampler(np.random.default_rng(0), points=3).sample()
    moved = task.to("cpu")
    assert isinstance(moved, SineTask) and moved.amplitude == task.amplitude


def test_grid_tasks_train_on_the_demos_evenly_spaced_points_shuffled():
    sampler = SineTaskSampler(np.random.default_rng(5), points=50, grid=True)
    a, b = sampler.sample(), sampler.sample()
    grid = torch.linspace(-5, 5, 50, dtype=torch.float64).float()
    for task in (a, b):
        torch.testing.assert_close(task.support_x[:, 0].sort().values, grid, rtol=0, atol=1e-6)
        expected = task.amplitude * torch.sin(task.support_x.double() + task.phase)
        torch.testing.assert_close(task.support_y.double(), expected, rtol=0, atol=1e-5)
    assert not torch.equal(a.support_x, b.support_x)  # a fresh order per task
    assert not torch.equal(a.support_x[:, 0], grid)
