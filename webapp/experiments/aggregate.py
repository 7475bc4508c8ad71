"""Statistics across seeds: a configuration's result is its mean over seeds, with a 95%
confidence interval from Student's t on the sample standard deviation (n - 1 degrees of
freedom). One seed has a mean but no interval: nothing says how much seeds vary.

This interval is about seeds (how much the result moves when training is repeated), not
about test tasks (each run's own `test_ci95`): the two are different questions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

CI_METHOD = "95% CI across seeds: Student's t on the sample standard deviation (n - 1 d.o.f.)"

# t(0.975, df) for df = 1..30 (two-sided 95%).
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_Z975 = 1.959964


def t_quantile_975(df: int) -> float:
    """Student's t 97.5% quantile; beyond the table, the Cornish-Fisher expansion in 1/df
    (off by under 1e-4 for df > 30)."""
    if df < 1:
        raise ValueError("degrees of freedom must be at least 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class SeedStats:
    """`n` seeds' mean, sample standard deviation and 95% half-width (None for one seed)."""

    n: int
    mean: float
    std: float | None
    ci95: float | None


def from_moments(n: int, total: float, total_sq: float) -> SeedStats | None:
    """Stats from a count, a sum and a sum of squares (what SQL aggregates give); None for
    no values. Negative variances from rounding are taken as zero."""
    if n <= 0:
        return None
    mean = total / n
    if n == 1:
        return SeedStats(1, mean, None, None)
    variance = max(0.0, (total_sq - n * mean * mean) / (n - 1))
    std = math.sqrt(variance)
    return SeedStats(n, mean, std, t_quantile_975(n - 1) * std / math.sqrt(n))


def seed_stats(values: Iterable[float]) -> SeedStats | None:
    """Stats of a list of per-seed results (two passes: exact for a short list)."""
    xs = [float(v) for v in values]
    if not xs:
        return None
    mean = sum(xs) / len(xs)
    if len(xs) == 1:
        return SeedStats(1, mean, None, None)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    return SeedStats(len(xs), mean, std, t_quantile_975(len(xs) - 1) * std / math.sqrt(len(xs)))
