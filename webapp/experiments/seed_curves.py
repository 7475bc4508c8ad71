"""An experiment's curves aggregated over its seeds: per bucket of steps, the mean over every
seed's points and the band from the lowest to the highest of them (min/max over seeds), all
computed by the database; a long run is never sent point by point."""

from __future__ import annotations

from typing import Any

from django.db.models import Avg, Count, F, Max, Min

from .metrics_series import metric_names
from .models import Experiment, MetricPoint, Run

BAND = "min/max over seeds"
MAX_POINTS = 300
MAX_CURVES = 6
# Shown first when a run has them: what the paper plots.
PREFERRED = ("validation_accuracy", "accuracy", "inner_loss", "loss_after", "loss_before")


def _order(name: str) -> tuple[int, str]:
    return (PREFERRED.index(name) if name in PREFERRED else len(PREFERRED), name)


def curve(run_ids: list[int], name: str, max_points: int = MAX_POINTS) -> dict[str, Any]:
    """{"name", "steps", "mean", "low", "high", "seeds"} for the series `name` of `run_ids`;
    `seeds` counts the runs with a point in each bucket."""
    points = MetricPoint.objects.filter(run_id__in=run_ids, name=name)
    span = points.aggregate(first=Min("step"), last=Max("step"))
    if span["first"] is None:
        return {"name": name, "steps": [], "mean": [], "low": [], "high": [], "seeds": []}
    width = max(1, (span["last"] - span["first"]) // max_points + 1)
    rows = (
        points.annotate(bucket=(F("step") - span["first"]) / width)
        .values("bucket")
        .annotate(
            step=Max("step"),
            mean=Avg("value"),
            low=Min("value"),
            high=Max("value"),
            seeds=Count("run_id", distinct=True),
        )
        .order_by("bucket")
    )
    out: dict[str, Any] = {
        "name": name,
        "steps": [],
        "mean": [],
        "low": [],
        "high": [],
        "seeds": [],
    }
    for row in rows:
        for key in ("step", "mean", "low", "high", "seeds"):
            out["steps" if key == "step" else key].append(row[key])
    return out


def experiment_curves(experiment: Experiment, runs: list[Run]) -> list[dict[str, Any]]:
    """The curves of an experiment with more than one seed that has points (one seed's own
    page draws its curves); names from the first such run, preferred ones first."""
    started = [r for r in runs if r.status != Run.Status.QUEUED or r.iteration]
    if len(started) < 2:
        return []
    names = sorted(metric_names(started[0]), key=_order)[:MAX_CURVES]
    ids = [r.pk for r in started]
    return [c for c in (curve(ids, name) for name in names) if c["steps"]]
