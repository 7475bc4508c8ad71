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


def format_value(value: object) -> str:
    """One value of an evaluation's details, by its type: yes/no for booleans, a dash for
    nothing, text as it is, whole numbers whole, other numbers to 4 decimals (trailing
    zeros dropped)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        text = f"{value:.4f}".rstrip("0").rstrip(".")
        return text if text not in ("", "-0") else "0"
    return str(value)


def format_loss(value: float | None) -> str:
    """A regression loss (mean squared error) for tables: 4 significant digits."""
    if value is None or not math.isfinite(value):
        return ""
    return f"{value:.4g}"


def format_duration(seconds: float | None) -> str:
    """Seconds as people read them: '42 s', '3 min 05 s', '2 h 07 min', '3 d 4 h'."""
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def format_timestamp(value) -> str:
    """A stored time in the server's display time zone, with the zone named
    ("2025-01-31 14:05:09 UTC"); empty for None."""
    if value is None:
        return ""
    from django.utils import timezone

    local = timezone.localtime(value)
    return local.strftime("%Y-%m-%d %H:%M:%S ") + (local.tzname() or "")
