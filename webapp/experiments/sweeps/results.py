"""A sweep's configurations with their results over seeds, aggregated by the database, and
the data its page draws (parallel coordinates, one scatter per varied field)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Count, F, Q, Sum

from ..aggregate import SeedStats, from_moments
from ..models import Run, Sweep

_SCORED = Q(runs__status=Run.Status.SUCCEEDED, runs__test_accuracy__isnull=False)
_ACTIVE = Q(runs__status__in=(Run.Status.QUEUED, Run.Status.RUNNING, Run.Status.LOST))


@dataclass
class Configuration:
    """One configuration of a sweep (an experiment) and its seeds' outcome."""

    experiment_id: int
    name: str
    params: dict[str, Any]
    runs: int
    active: int
    stats: SeedStats | None  # over its succeeded seeds
    rank: int = 0
    best: bool = False

    @property
    def mean(self) -> float | None:
        return None if self.stats is None else self.stats.mean

    @property
    def ci95(self) -> float | None:
        return None if self.stats is None else self.stats.ci95

    @property
    def seeds(self) -> int:
        return 0 if self.stats is None else self.stats.n


def configurations(sweep: Sweep) -> list[Configuration]:
    """Every configuration, best mean first (those without a result last, in proposal order);
    the best is marked. Equal means share a rank."""
    rows = (
        sweep.experiments.annotate(
            n_runs=Count("runs"),
            active=Count("runs", filter=_ACTIVE),
            scored=Count("runs", filter=_SCORED),
            total=Sum("runs__test_accuracy", filter=_SCORED),
            total_sq=Sum(F("runs__test_accuracy") * F("runs__test_accuracy"), filter=_SCORED),
        )
        .values("pk", "name", "sweep_params", "n_runs", "active", "scored", "total", "total_sq")
        .order_by("pk")
    )
    out = [
        Configuration(
            experiment_id=r["pk"],
            name=r["name"],
            params=r["sweep_params"] or {},
            runs=r["n_runs"],
            active=r["active"],
            stats=from_moments(r["scored"], r["total"] or 0.0, r["total_sq"] or 0.0),
        )
        for r in rows
    ]
    out.sort(key=lambda c: (c.mean is None, -(c.mean or 0.0), c.experiment_id))
    for i, c in enumerate(out):
        if c.mean is None:
            break
        c.rank = out[i - 1].rank if i and c.mean == out[i - 1].mean else i + 1
        c.best = c.rank == 1
    return out


def chart_data(sweep: Sweep, configs: list[Configuration]) -> dict[str, Any]:
    """What static/js/sweep_charts.js draws: the varied fields (with their kind, so a log range
    gets a log axis and a list gets its values as ticks) and every scored configuration."""
    return {
        "fields": [
            {
                "name": field,
                "values": spec.get("values"),
                "log": bool(spec.get("log")),
            }
            for field, spec in sweep.space.items()
        ],
        "configurations": [
            {
                "experiment_id": c.experiment_id,
                "params": c.params,
                "mean": c.mean,
                "ci95": c.ci95,
                "seeds": c.seeds,
                "best": c.best,
            }
            for c in configs
            if c.mean is not None
        ],
    }
