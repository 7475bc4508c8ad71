"""Metric series for charts: bounded in size whatever the length of the run.

A run of 100,000 meta-iterations has 100,000 points per metric; a chart needs a few hundred.
So full series are bucketed on the server by step range (per bucket: min, max and the value at
the bucket's last step; the series' first and last points always kept), in SQL, so the database
returns at most `max_points` rows per metric. A live page first loads the bucketed series, then
asks only for the raw points after the last step it has (`after_step`) and appends them.

Non-finite values (a diverged loss) come back as None: JSON has no NaN.
"""

from __future__ import annotations

import math

from django.db import connection
from django.db.models import Count, F, IntegerField, Max, Min, QuerySet
from django.db.models.expressions import ExpressionWrapper

from . import series_summaries
from .models import MetricPoint, Run
from .skip_scan import distinct_values_cte

DEFAULT_MAX_POINTS = 1500
MIN_MAX_POINTS = 2  # the first and the last point


def metric_names(run: Run) -> list[str]:
    """Names of the run's metric series, sorted.

    A plain DISTINCT reads every point of the run (hundreds of thousands on a long run, on each
    poll of a live page); this recursive query jumps from one name to the next on the
    (run, name, step) index instead: one index probe per name. SQLite and PostgreSQL both run it.
    """
    return _metric_names(run.pk)


# The run's series names (the run's id twice), one index probe per name: see metric_names.
_NAMES_CTE = distinct_values_cte("names", MetricPoint._meta.db_table, "name", "run_id = %s")


def _metric_names(run_id: int) -> list[str]:
    sql = f"{_NAMES_CTE} SELECT value FROM names WHERE value IS NOT NULL"
    with connection.cursor() as cursor:
        cursor.execute(sql, [run_id, run_id])
        return [row[0] for row in cursor.fetchall()]


def live_tail(
    run_id: int,
    after_step: int,
    max_points: int = DEFAULT_MAX_POINTS,
    from_step: int | None = None,
    to_step: int | None = None,
) -> tuple[list[str], dict[str, dict]] | None:
    """Every series name of the run, and per name its raw points after `after_step` (at most
    `max_points`, oldest first, within `from_step`..`to_step`), as `series(..., after_step=)`
    gives them: what a live page asks for every few seconds. None when there is no such run.

    On PostgreSQL this is one statement: the run's row, its names found as in `metric_names`,
    each joined LATERALly to its own bounded index range; so a poll costs one round trip
    whatever the number of series (it was one for the run, one for the names and one per
    series). SQLite has no LATERAL and answers with one query per series.
    """
    if connection.vendor != "postgresql":
        if not Run.objects.filter(pk=run_id).exists():
            return None
        names = _metric_names(run_id)
        points = _window(MetricPoint.objects.filter(run_id=run_id), from_step, to_step)
        return names, _tails(points, names, after_step, max_points)
    table = MetricPoint._meta.db_table
    window, params = "", [run_id, run_id, run_id, after_step]
    if from_step is not None:
        window += " AND step >= %s"
        params.append(from_step)
    if to_step is not None:
        window += " AND step <= %s"
        params.append(to_step)
    params += [max_points, run_id]
    sql = f"""{_NAMES_CTE}
        SELECT names.value, tail.step, tail.value FROM {Run._meta.db_table} AS run
        LEFT JOIN names ON names.value IS NOT NULL
        LEFT JOIN LATERAL (
            SELECT step, value FROM {table}
            WHERE run_id = %s AND name = names.value AND step > %s{window}
            ORDER BY step LIMIT %s
        ) AS tail ON TRUE
        WHERE run.id = %s
        ORDER BY names.value, tail.step
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if not rows:
        return None
    points: dict[str, list[tuple[int, float]]] = {}
    for name, step, value in rows:
        if name is None:  # the run has no points yet
            continue
        found = points.setdefault(name, [])
        if step is not None:
            found.append((step, value))
    return list(points), {name: _raw(found) for name, found in points.items()}


def _window(points: QuerySet, from_step: int | None, to_step: int | None) -> QuerySet:
    if from_step is not None:
        points = points.filter(step__gte=from_step)
    if to_step is not None:
        points = points.filter(step__lte=to_step)
    return points


def _tails(points: QuerySet, names: list[str], after_step: int, max_points: int) -> dict:
    """Per name, its raw points of `points` after `after_step`: one query per name."""
    out = {}
    for name in names:
        tail = list(
            points.filter(name=name, step__gt=after_step)
            .order_by("step")
            .values_list("step", "value")[:max_points]
        )
        out[name] = _raw(tail)
    return out


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _empty() -> dict:
    return {
        "steps": [],
        "values": [],
        "min": [],
        "max": [],
        "last_step": None,
        "downsampled": False,
    }


def _raw(points: list[tuple[int, float]], *, downsampled: bool = False) -> dict:
    values = [_finite(v) for _, v in points]
    return {
        "steps": [s for s, _ in points],
        "values": values,
        "min": list(values),
        "max": list(values),
        "last_step": points[-1][0] if points else None,
        "downsampled": downsampled,
    }


def _bucketed(points: QuerySet, name: str, first: int, last: int, max_points: int) -> dict:
    """Bucket one series into at most `max_points` points with two bounded queries.

    Buckets are equal step ranges of width `ceil(span / buckets)`, numbered from the first step.
    One GROUP BY returns per bucket its min, max and last step; a second query fetches the values
    at those last steps (and at the first step, kept as a point of its own).
    """
    buckets = max_points - 1  # one point is reserved for the first step
    width = max(1, math.ceil((last - first + 1) / buckets))
    points = points.filter(name=name)
    grouped = (
        points.annotate(
            bucket=ExpressionWrapper((F("step") - first) / width, output_field=IntegerField())
        )
        .order_by()
        .values("bucket")
        .annotate(lo=Min("value"), hi=Max("value"), last_step=Max("step"))
        .order_by("bucket")
    )
    rows = list(grouped.values_list("last_step", "lo", "hi"))
    wanted = {first} | {last_step for last_step, _, _ in rows}
    value_at = dict(points.filter(step__in=wanted).values_list("step", "value"))

    result = _empty()
    result["downsampled"] = True
    if rows and rows[0][0] != first:
        # The first bucket reports its last step; the very first point is kept on its own.
        v = _finite(value_at[first])
        result["steps"].append(first)
        result["values"].append(v)
        result["min"].append(v)
        result["max"].append(v)
    for last_step, lo, hi in rows:
        result["steps"].append(last_step)
        result["values"].append(_finite(value_at[last_step]))
        result["min"].append(_finite(lo))
        result["max"].append(_finite(hi))
    result["last_step"] = rows[-1][0] if rows else None
    return result


def series(
    run: Run,
    names: list[str] | None = None,
    after_step: int | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
    from_step: int | None = None,
    to_step: int | None = None,
) -> dict[str, dict]:
    """Per metric name: `{"steps", "values", "min", "max", "last_step", "downsampled"}`.

    Without `after_step`: the whole series, bucketed by step range when it has more than
    `max_points` points (then `values` is the value at each bucket's last step, `min`/`max` the
    bucket's extremes; the first and last points are always present). With `after_step`: only
    raw points with step > after_step, at most `max_points` of them, oldest first; `last_step` is
    the last step returned (None when there is nothing new), so a client can ask again from it.

    `from_step` / `to_step` (inclusive, either may be None) restrict the series to a step window
    before bucketing: a zoomed chart asks for the finer data of the range it shows.

    `names` None means every series of the run; an unknown name gives an empty series.

    A stopped run's whole series are computed once and then read from `series_summaries`
    (their values then at `presentation.round_metric`'s precision, as the server sends them).
    """
    if max_points < MIN_MAX_POINTS:
        raise ValueError(f"max_points must be at least {MIN_MAX_POINTS}")
    if after_step is not None and names is None and connection.vendor == "postgresql":
        # A live page's poll of every series: one statement (live_tail), not one per series.
        found = live_tail(run.pk, after_step, max_points, from_step=from_step, to_step=to_step)
        return found[1] if found else {}
    if names is None:
        names = metric_names(run)
    if not names:
        return {}
    points = _window(MetricPoint.objects.filter(run=run), from_step, to_step)
    if after_step is not None:
        return _tails(points, names, after_step, max_points)

    whole = from_step is None and to_step is None
    kept = series_summaries.load(run, names, max_points) if whole else {}
    computed = _whole_series(points, [n for n in names if n not in kept], max_points)
    if whole:
        computed |= series_summaries.store(
            run, max_points, {n: data for n, data in computed.items() if data["steps"]}
        )
    return {name: kept[name] if name in kept else computed[name] for name in names}


def _whole_series(points: QuerySet, names: list[str], max_points: int) -> dict[str, dict]:
    """Each named series of `points`, raw when short enough, else bucketed."""
    if not names:
        return {}
    stats = {
        row["name"]: row
        for row in points.filter(name__in=names)
        .order_by()
        .values("name")
        .annotate(n=Count("id"), first=Min("step"), last=Max("step"))
    }
    out = {}
    for name in names:
        info = stats.get(name)
        if info is None:
            out[name] = _empty()
        elif info["n"] <= max_points:
            raw = points.filter(name=name).order_by("step").values_list("step", "value")
            out[name] = _raw(list(raw))
        else:
            out[name] = _bucketed(points, name, info["first"], info["last"], max_points)
    return out
