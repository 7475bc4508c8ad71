"""mean_ci95 against NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from metatrain.stats import CI_METHOD, mean_ci95


def test_mean_and_ci_match_numpy_normal_approximation():
    values = np.random.default_rng(0).random(500)
    mean, ci = mean_ci95(values.tolist())
    assert mean == pytest.approx(values.mean(), abs=1e-12)
    expected = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert ci == pytest.approx(expected, rel=1e-12)


def test_ci_of_binary_task_scores():
    values = [1.0] * 90 + [0.0] * 10
    mean, ci = mean_ci95(values)
    assert mean == pytest.approx(0.9)
    assert ci == pytest.approx(1.96 * np.std(values, ddof=1) / 10)


def test_constant_scores_have_zero_width():
    assert mean_ci95([0.5, 0.5, 0.5]) == (0.5, 0.0)


def test_one_value_has_no_interval_and_none_is_an_error():
    assert mean_ci95([0.7]) == (0.7, None)
    with pytest.raises(ValueError):
        mean_ci95([])


def test_method_is_described():
    assert "1.96" in CI_METHOD and "normal" in CI_METHOD
