"""Bucketed series of stopped runs, computed once and kept (the SeriesSummary table).

Bucketing a 100,000-point series reads every point: about a second per chart load on
PostgreSQL. A run that has stopped (succeeded, failed, cancelled, or lost until it resumes)
writes no more points, so its bucketed form is kept per (name, max_points) and served from one
indexed read. Only whole series are kept: zoomed windows and live tails are bounded reads already.

Values are kept at the precision the server sends them (presentation.round_metric: about what
a float32 holds), so the API sends a kept series as stored, without decoding it.

A summary is stamped with the run's attempt and served only while the run is stopped at that
attempt. A resumed attempt deletes them (`forget`) in the fenced transaction that deletes the
steps it will rewrite, and the attempt stamp also rejects any summary a slow request writes
after that.
"""

from __future__ import annotations

import json

from .models import Run, SeriesSummary
from .presentation import round_metric

# Statuses in which no worker writes the run's points.
STOPPED_STATUSES = frozenset(
    {Run.Status.SUCCEEDED, Run.Status.FAILED, Run.Status.CANCELLED, Run.Status.LOST}
)
_ROUNDED = ("values", "min", "max")


def keeps(run: Run) -> bool:
    """Whether the run's series can be served from, and stored as, summaries."""
    return run.status in STOPPED_STATUSES


def load_json(run: Run, names: list[str], max_points: int) -> dict[str, str]:
    """The kept summaries of these series at this resolution as JSON text, by name (missing
    ones left out): what the API sends without decoding it."""
    if not keeps(run):
        return {}
    rows = SeriesSummary.objects.filter(
        run=run, attempt=run.attempts, max_points=max_points, name__in=names
    ).values_list("name", "body")
    return dict(rows)


def load(run: Run, names: list[str], max_points: int) -> dict[str, dict]:
    """The kept summaries of these series at this resolution, by name (missing ones left out)."""
    return {name: json.loads(body) for name, body in load_json(run, names, max_points).items()}


def rounded(data: dict) -> dict:
    """A series with its values at the precision every reader is sent (round_metric)."""
    return {**data, **{key: [round_metric(v) for v in data[key]] for key in _ROUNDED}}


def store(run: Run, max_points: int, series: dict[str, dict]) -> dict[str, dict]:
    """Keep these computed series (a concurrent request may have kept them first: no error);
    returns them as kept, rounded like what `load` will return."""
    if not keeps(run) or not series:
        return series
    kept = {name: rounded(data) for name, data in series.items()}
    SeriesSummary.objects.bulk_create(
        [
            SeriesSummary(
                run=run,
                attempt=run.attempts,
                name=name,
                max_points=max_points,
                body=json.dumps(data, separators=(",", ":"), allow_nan=False),
            )
            for name, data in kept.items()
        ],
        ignore_conflicts=True,
    )
    return kept


def forget(run_id: int) -> None:
    """Delete every summary of the run: its points are about to change."""
    SeriesSummary.objects.filter(run_id=run_id).delete()
