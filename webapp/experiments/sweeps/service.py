"""Create a sweep, add its next configurations as earlier ones finish, cancel it.

Every configuration becomes an Experiment through `services.create_experiment`, the form's
own path: validation, quotas, config and group hashes and dispatch stay one code path. A sweep
keeps at most `parallel` configurations in flight (so the per-user quotas hold as it goes)
and proposes more when one finishes: from the worker's hook (`run_finished`, after the run's
commit) and from the periodic supervision pass (`top_up_active`), so a missed hook only delays
a sweep. Proposing takes the sweep's row lock and counts what exists, so two callers at once
never add the same configuration twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q, Sum

from .. import services
from ..errors import ErrorList, QuotaExceeded, ServiceError, ValidationFailed
from ..models import Experiment, Queue, Run, Sweep
from ..validation import DB_INT_MAX, validate_experiment
from . import search
from .space import GRID, Dimension, grid_points, parse_space, space_json

logger = logging.getLogger(__name__)

METHODS = tuple(Sweep.Method.values)
MAX_PARALLEL = 50
ACTIVE = (Run.Status.QUEUED, Run.Status.RUNNING, Run.Status.LOST)


@dataclass(frozen=True)
class SweepPlan:
    """A checked sweep: its dimensions and how many configurations and runs it plans."""

    dims: list[Dimension]
    configurations: int
    runs: int


def _whole(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def plan_sweep(
    owner,
    *,
    name: object,
    config: object,
    space: object,
    method: object,
    seeds: object,
    trials: object = 0,
    parallel: object = 4,
    sampler_seed: object = 0,
    preset: object = "",
    queue: object = Queue.ANY,
    description: object = "",
) -> SweepPlan:
    """Check everything about a sweep before anything is saved; ValidationFailed with every
    error. The base config and seeds are checked as an experiment's; then every configuration
    of a grid, and every listed value and both ends of every range of a search, each through
    metatrain's Config: an invalid point is named by its field and value."""
    errors = ErrorList()
    if method not in METHODS:
        errors.add("method", f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
        method = GRID
    dims, space_errors = parse_space(space, str(method))
    errors.extend(space_errors.errors)
    if method != GRID and not _whole(trials, 1, DB_INT_MAX):
        errors.add("trials", "Give the number of configurations to try (1 or more).")
    if not _whole(parallel, 1, MAX_PARALLEL):
        errors.add(
            "parallel", f"Configurations in flight: a whole number from 1 to {MAX_PARALLEL}."
        )
    if not _whole(sampler_seed, 0, DB_INT_MAX):
        errors.add("sampler_seed", f"The search's seed: a whole number from 0 to {DB_INT_MAX:,}.")
    common = {"preset": preset, "queue": queue, "description": description, "seeds": seeds}
    try:
        validate_experiment(owner, name=name, config=config, **common)
    except ValidationFailed as err:
        errors.extend(err.errors)
    errors.raise_if_any()

    configurations = search.planned(str(method), dims, trials if method != GRID else 0)  # type: ignore[arg-type]
    runs = configurations * len(seeds)  # type: ignore[arg-type]
    limit = settings.SWEEP_MAX_RUNS
    if limit and runs > limit:
        raise ValidationFailed(
            [
                (
                    "space",
                    f"This sweep plans {configurations:,} configurations × {len(seeds)} "  # type: ignore[arg-type]
                    f"seeds = {runs:,} runs; the limit is {limit:,} (SWEEP_MAX_RUNS). Vary "
                    "fewer values, ask for fewer trials, or use fewer seeds.",
                )
            ]
        )
    base = dict(config)  # type: ignore[call-overload]
    if method == GRID:
        points = grid_points(dims)
    else:
        points = [{d.field: value} for d in dims for value in d.corners()]
    for point in points:
        try:
            validate_experiment(owner, name=name, config={**base, **point}, **common)
        except ValidationFailed as err:
            field, message = err.errors[0]
            shown = ", ".join(f"{k} = {v!r}" for k, v in point.items())
            errors.add(f"space.{field}" if field in point else "space", f"{shown}: {message}")
    errors.raise_if_any()
    return SweepPlan(dims, configurations, runs)


@transaction.atomic
def create_sweep(owner, *, cloned_from: Sweep | None = None, **spec: Any) -> Sweep:
    """Check (`plan_sweep`), save the sweep and queue its first configurations. A quota that
    leaves room for none refuses the sweep (QuotaExceeded); nothing is saved on any error."""
    plan = plan_sweep(owner, **spec)

    sweep = Sweep.objects.create(
        owner=owner,
        name=spec["name"],
        description=spec.get("description", ""),
        preset=spec.get("preset", ""),
        base_config=dict(spec["config"]),
        space=space_json(plan.dims),
        method=spec["method"],
        trials=plan.configurations,
        parallel=spec.get("parallel", 4),
        sampler_seed=spec.get("sampler_seed", 0),
        seeds=list(spec["seeds"]),
        queue=spec.get("queue", Queue.ANY),
        cloned_from=cloned_from,
    )
    _top_up_locked(sweep, raise_quota=True)
    return sweep


def history(sweep: Sweep) -> tuple[list[search.Trial], int]:
    """The sweep's configurations in the order they were proposed, as trials (objective: the
    mean final test accuracy of the seeds that succeeded, once no seed is active), and how
    many are still in flight."""
    experiments = sweep.experiments.order_by("id").annotate(
        active=Count("runs", filter=Q(runs__status__in=ACTIVE)),
        scored=Count(
            "runs",
            filter=Q(runs__status=Run.Status.SUCCEEDED, runs__test_accuracy__isnull=False),
        ),
        total=Sum(
            "runs__test_accuracy",
            filter=Q(runs__status=Run.Status.SUCCEEDED, runs__test_accuracy__isnull=False),
        ),
    )
    trials, in_flight = [], 0
    for e in experiments.values("sweep_params", "active", "scored", "total"):
        if e["active"]:
            in_flight += 1
            trials.append(search.Trial(e["sweep_params"] or {}))
        elif e["scored"]:
            trials.append(search.Trial(e["sweep_params"] or {}, value=e["total"] / e["scored"]))
        else:
            trials.append(search.Trial(e["sweep_params"] or {}, failed=True))
    return trials, in_flight


def _name(sweep: Sweep, index: int, params: dict[str, Any]) -> str:
    values = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
    return f"{sweep.name} #{index + 1}: {values}"[:200]


def _top_up_locked(sweep: Sweep, *, raise_quota: bool = False) -> list[Experiment]:
    if sweep.status != Sweep.Status.ACTIVE:
        return []
    trials, in_flight = history(sweep)
    dims, _ = parse_space(sweep.space, sweep.method)
    points = search.propose(
        sweep.method,
        dims,
        trials,
        sweep.parallel - in_flight,
        seed=sweep.sampler_seed,
        trials=sweep.trials,
    )
    created = []
    for offset, params in enumerate(points):
        try:
            experiment = services.create_experiment(
                sweep.owner,
                name=_name(sweep, len(trials) + offset, params),
                description=f"Configuration {len(trials) + offset + 1} of sweep #{sweep.pk}.",
                config={**sweep.base_config, **params},
                seeds=list(sweep.seeds),
                preset=sweep.preset,
                queue=sweep.queue,
                sweep=sweep,
                sweep_params=params,
            )
        except QuotaExceeded:
            # The owner's quota is full: the next pass (a run finishing, supervision) retries.
            if raise_quota and not created:
                raise
            break
        except ServiceError as err:
            # A proposal inside the checked ranges that metatrain still refuses (a rule
            # between fields): the sweep stops proposing, saying why, rather than loop on it.
            Sweep.objects.filter(pk=sweep.pk).update(
                status=Sweep.Status.CANCELLED,
                status_reason=f"Stopped: configuration {params} was refused: {err}",
            )
            logger.warning("sweep %s stopped: %s refused: %s", sweep.pk, params, err)
            break
        created.append(experiment)
    return created


def top_up(sweep_id: int) -> list[Experiment]:
    """Add the sweep's next configurations while fewer than `parallel` are in flight and its
    plan has more; idempotent, and safe with several callers (the sweep's row is locked)."""
    with transaction.atomic():
        sweep = Sweep.objects.select_for_update().filter(pk=sweep_id).first()
        if sweep is None:
            return []
        return _top_up_locked(sweep)


def top_up_active() -> int:
    """The periodic pass: top up every active sweep with room; configurations added."""
    added = 0
    # Only sweeps whose plan has configurations left: a spent sweep is never read again.
    open_sweeps = (
        Sweep.objects.filter(status=Sweep.Status.ACTIVE)
        .annotate(proposed=Count("experiments"))
        .filter(proposed__lt=F("trials"))
        .values_list("pk", flat=True)
    )
    for sweep_id in open_sweeps:
        try:
            added += len(top_up(sweep_id))
        except Exception:  # one broken sweep must not stop the others
            logger.exception("sweep %s: top-up failed", sweep_id)
    return added


def run_finished(run_id: int) -> None:
    """The worker's hook, after a run's final state is committed: top up its sweep, if any.
    Never raises: the run's outcome is already stored, and supervision retries the top-up."""
    try:
        sweep_id = (
            Run.objects.filter(pk=run_id).values_list("experiment__sweep_id", flat=True).first()
        )
        if sweep_id is not None:
            top_up(sweep_id)
    except Exception:
        logger.exception("run %s: topping up its sweep failed (supervision retries)", run_id)


@transaction.atomic
def cancel_sweep(sweep: Sweep) -> dict[str, int]:
    """Stop proposing, cancel the queued (and lost) runs at once and ask running ones to stop.
    Returns how many runs were cancelled and how many were asked to stop."""
    sweep = Sweep.objects.select_for_update().get(pk=sweep.pk)
    if sweep.status == Sweep.Status.ACTIVE:
        sweep.status = Sweep.Status.CANCELLED
        sweep.status_reason = "cancelled by its owner"
        sweep.save(update_fields=["status", "status_reason"])
    counts = {"cancelled": 0, "stopping": 0}
    for run in Run.objects.filter(experiment__sweep=sweep, status__in=ACTIVE):
        run = services.request_cancel(run)
        counts["stopping" if run.status == Run.Status.RUNNING else "cancelled"] += 1
    return counts


def sweep_progress(sweep: Sweep) -> dict[str, int]:
    """Runs per status, with how many configurations exist and are planned."""
    counts = dict(
        Run.objects.filter(experiment__sweep=sweep)
        .values_list("status")
        .annotate(n=Count("id"))
        .order_by()
    )
    out = {status: counts.get(status, 0) for status in Run.Status.values}
    out["runs"] = sum(counts.values())
    out["planned_runs"] = sweep.trials * len(sweep.seeds)
    out["configurations"] = sweep.experiments.count()
    out["planned_configurations"] = sweep.trials
    return out


def is_finished(progress: dict[str, int], sweep: Sweep) -> bool:
    active = sum(progress[s] for s in ACTIVE)
    return not active and (
        sweep.status != Sweep.Status.ACTIVE
        or progress["configurations"] >= progress["planned_configurations"]
    )
