"""Bucketed series of stopped runs, computed once and kept (the SeriesSummary table).

Bucketing a 100,000-point series reads every point: about a second per chart load on
PostgreSQL. A run that has stopped (succeeded, failed, cancelled, or lost until it resumes)
writes no more points, so its bucketed form is kept per (name, max_points) and served from one
indexed read. Only whole series are kept: zoomed windows and live tails are bounded reads already.

A summary is stamped with the run's attempt and served only while the run is stopped at that
attempt. A resumed attempt deletes them (`forget`) in the fenced transaction that deletes the
steps it will rewrite, and the attempt stamp also rejects any summary a slow request writes
after that.
"""

from __future__ import annotations

from .models import Run, SeriesSummary

# Statuses in which no worker writes the run's points.
STOPPED_STATUSES = frozenset(
    {Run.Status.SUCCEEDED, Run.Status.FAILED, Run.Status.CANCELLED, Run.Status.LOST}
)


def keeps(run: Run) -> bool:
    """Whether the run's series can be served from, and stored as, summaries."""
    return run.status in STOPPED_STATUSES


def load(run: Run, names: list[str], max_points: int) -> dict[str, dict]:
    """The kept summaries of these series at this resolution, by name (missing ones left out)."""
    if not keeps(run):
        return {}
    rows = SeriesSummary.objects.filter(
        run=run, attempt=run.attempts, max_points=max_points, name__in=names
    ).values_list("name", "data")
    return dict(rows)


def store(run: Run, max_points: int, series: dict[str, dict]) -> None:
    """Keep these computed series (a concurrent request may have kept them first: no error)."""
    if not keeps(run) or not series:
        return
    SeriesSummary.objects.bulk_create(
        [
            SeriesSummary(
                run=run, attempt=run.attempts, name=name, max_points=max_points, data=data
            )
            for name, data in series.items()
        ],
        ignore_conflicts=True,
    )


def forget(run_id: int) -> None:
    """Delete every summary of the run: its points are about to change."""
    SeriesSummary.objects.filter(run_id=run_id).delete()
