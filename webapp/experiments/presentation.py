"""How numbers leave the server (pages' JSON feeds and the API): without float32 noise.

Accuracies are computed from float32 tensors, so a stored 0.671 can come back as
0.6710000126063824. Fractions in 0..1 (accuracies and their 95% confidence half-widths) are
rounded to FRACTION_DECIMALS places: 1e-6 is 0.0001 percentage points, far below what 10,000
evaluation tasks can resolve. Other metric values (losses, step sizes, seconds) keep
METRIC_SIGNIFICANT_DIGITS significant digits, about what a float32 holds.
"""

from __future__ import annotations

import math

FRACTION_DECIMALS = 6
METRIC_SIGNIFICANT_DIGITS = 7


def round_fraction(value: float | None) -> float | None:
    """An accuracy or CI half-width, rounded to FRACTION_DECIMALS places (None and
    non-finite values unchanged: the JSON renderer sends those as null)."""
    if value is None or not math.isfinite(value):
        return value
    return round(value, FRACTION_DECIMALS)


def round_metric(value: float | None) -> float | None:
    """Any metric value, to METRIC_SIGNIFICANT_DIGITS significant digits."""
    if value is None or not math.isfinite(value) or value == 0:
        return value
    return float(f"{value:.{METRIC_SIGNIFICANT_DIGITS}g}")
