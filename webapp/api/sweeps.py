"""/api/sweeps: create a sweep, list and read sweeps, their configurations with aggregates
over seeds, their runs; cancel one."""

from __future__ import annotations

from typing import Annotated, Any

from django.db import DataError
from django.http import HttpRequest
from ninja import Path, Query, Router, Status

from webapp.experiments.access import get_sweep_for_user
from webapp.experiments.aggregate import CI_METHOD
from webapp.experiments.filtering import OWNER_ME
from webapp.experiments.models import Run, Sweep
from webapp.experiments.sweeps import service
from webapp.experiments.sweeps.results import configurations

from .auth import user_of
from .outputs import round_fraction, run_list_data
from .schemas import (
    INT32_MAX,
    PAGE_LIMIT_MAX,
    FieldErrors,
    QuotaErrorOut,
    RunPage,
    Text,
    ValidationErrorOut,
)
from .sweep_schemas import (
    SweepCancelOut,
    SweepConfigurationsOut,
    SweepIn,
    SweepOut,
    SweepPage,
)

router = Router()

SweepId = Annotated[int, Path(ge=1, le=2**63 - 1)]
Limit = Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX)]
Offset = Annotated[int, Query(ge=0, le=INT32_MAX)]


def sweep_data(sweep: Sweep) -> dict[str, Any]:
    progress = service.sweep_progress(sweep)
    return {
        "id": sweep.pk,
        "name": sweep.name,
        "description": sweep.description,
        "owner": sweep.owner.get_username(),
        "preset": sweep.preset,
        "overrides": sweep.base_config,
        "space": sweep.space,
        "method": sweep.method,
        "trials": sweep.trials,
        "parallel": sweep.parallel,
        "sampler_seed": sweep.sampler_seed,
        "seeds": sweep.seeds,
        "queue": sweep.queue,
        "status": sweep.status,
        "status_reason": sweep.status_reason,
        "finished": service.is_finished(progress, sweep),
        "progress": progress,
        "cloned_from": sweep.cloned_from_id,
        "created_at": sweep.created_at,
        "url": sweep.get_absolute_url(),
    }


@router.post(
    "",
    response={201: SweepOut, 409: QuotaErrorOut, 422: ValidationErrorOut},
    summary="Create a sweep: its first configurations are queued at once",
)
def create_sweep(request: HttpRequest, payload: SweepIn):
    """Checked like the form: every grid configuration (every listed value and both ends of
    every range of a search) through metatrain's Config before anything is saved; an invalid
    point is reported on `space.<field>` with its value. More than SWEEP_MAX_RUNS runs
    (configurations × seeds) is refused with 422; a quota with no room with 409."""
    try:
        sweep = service.create_sweep(
            user_of(request),
            name=payload.name,
            description=payload.description,
            preset=payload.preset,
            config=payload.overrides,
            space=payload.space,
            method=payload.method,
            trials=payload.trials,
            parallel=payload.parallel,
            sampler_seed=payload.sampler_seed,
            seeds=payload.seeds,
            queue=payload.queue,
        )
    except DataError:
        raise FieldErrors([(None, "A value is out of range for the database.")]) from None
    return Status(201, sweep_data(sweep))


@router.get("", response=SweepPage, summary="List sweeps, newest first")
def list_sweeps(
    request: HttpRequest,
    owner: Annotated[
        Text | None, Query(max_length=150, description="a username, or `me` for your own")
    ] = None,
    limit: Limit = 50,
    offset: Offset = 0,
):
    sweeps = Sweep.objects.select_related("owner")
    if owner == OWNER_ME:
        sweeps = sweeps.filter(owner=user_of(request))
    elif owner:
        sweeps = sweeps.filter(owner__username=owner)
    return {
        "count": sweeps.count(),
        "limit": limit,
        "offset": offset,
        "items": [sweep_data(s) for s in sweeps[offset : offset + limit]],
    }


@router.get("/{sweep_id}", response=SweepOut, summary="One sweep with its progress")
def get_sweep(request: HttpRequest, sweep_id: SweepId):
    return sweep_data(get_sweep_for_user(user_of(request), sweep_id))


@router.get(
    "/{sweep_id}/configurations",
    response=SweepConfigurationsOut,
    summary="A sweep's configurations: mean and CI across seeds, best first",
)
def sweep_configurations(request: HttpRequest, sweep_id: SweepId):
    sweep = get_sweep_for_user(user_of(request), sweep_id)
    items = [
        {
            "experiment_id": c.experiment_id,
            "name": c.name,
            "params": c.params,
            "rank": c.rank or None,
            "best": c.best,
            "mean": round_fraction(c.mean),
            "ci95": round_fraction(c.ci95),
            "std": round_fraction(c.stats.std if c.stats else None),
            "seeds": c.seeds,
            "runs": c.runs,
            "active": c.active,
        }
        for c in configurations(sweep)
    ]
    return {"units": "fraction", "ci_method": CI_METHOD, "items": items}


@router.get("/{sweep_id}/runs", response=RunPage, summary="A sweep's runs, newest first")
def sweep_runs(request: HttpRequest, sweep_id: SweepId, limit: Limit = 50, offset: Offset = 0):
    user = user_of(request)
    sweep = get_sweep_for_user(user, sweep_id)
    runs = Run.objects.filter(experiment__sweep=sweep).order_by("-id")
    return {
        "count": runs.count(),
        "limit": limit,
        "offset": offset,
        "items": run_list_data(runs[offset : offset + limit], user),
    }


@router.post(
    "/{sweep_id}/cancel",
    response=SweepCancelOut,
    summary="Cancel a sweep (owner or staff): queued runs at once, running ones asked to stop",
)
def cancel_sweep(request: HttpRequest, sweep_id: SweepId):
    sweep = get_sweep_for_user(user_of(request), sweep_id, for_change=True)
    counts = service.cancel_sweep(sweep)
    sweep.refresh_from_db()
    return {**counts, "sweep": sweep_data(sweep)}
