"""Summary statistics for per-task evaluation scores."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["CI_METHOD", "mean_ci95"]

CI_METHOD = (
    "normal approximation over tasks: 1.96 * sample standard deviation (ddof=1) / sqrt(tasks)"
)


def mean_ci95(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean of ``values`` and the half-width of its 95 % confidence interval.

    Uses the normal approximation (1.96 standard errors, sample standard deviation with
    ddof = 1), appropriate for the thousands of tasks the paper evaluates on. The half-width
    is None for fewer than two values, where no spread can be estimated.
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci95 needs at least one value")
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, 1.96 * math.sqrt(var) / math.sqrt(n)
