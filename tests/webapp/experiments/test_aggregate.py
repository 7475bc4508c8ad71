"""Statistics across seeds: mean, sample standard deviation, Student's t 95% CI."""

from __future__ import annotations

import math

import pytest

from webapp.experiments.aggregate import from_moments, seed_stats, t_quantile_975


def test_a_single_seed_has_a_mean_but_no_interval():
    stats = seed_stats([0.9])
    assert (stats.n, stats.mean, stats.std, stats.ci95) == (1, 0.9, None, None)
    assert seed_stats([]) is None


def test_the_interval_uses_students_t_with_n_minus_one_degrees_of_freedom():
    values = [0.90, 0.92, 0.97]
    stats = seed_stats(values)
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    assert stats.mean == pytest.approx(mean) and stats.std == pytest.approx(std)
    assert stats.ci95 == pytest.approx(4.3027 * std / math.sqrt(3))


def test_sql_moments_give_the_same_stats_as_the_values():
    values = [0.5, 0.61, 0.58, 0.7]
    direct = seed_stats(values)
    moments = from_moments(len(values), sum(values), sum(v * v for v in values))
    assert moments.mean == pytest.approx(direct.mean)
    assert moments.ci95 == pytest.approx(direct.ci95)
    # Equal values: rounding must not make the variance negative.
    assert from_moments(3, 3 * 0.1, 3 * 0.1 * 0.1).ci95 == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    ("df", "expected"),
    [(1, 12.7062), (2, 4.3027), (9, 2.2622), (30, 2.0423), (40, 2.0211), (120, 1.9799)],
)
def test_t_quantiles_match_the_tables(df, expected):
    assert t_quantile_975(df) == pytest.approx(expected, abs=2e-4)
