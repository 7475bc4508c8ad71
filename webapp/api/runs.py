"""/api/runs: list with filters, read, cancel, metric series, evaluations and downloads.

Every run is fetched through `webapp.experiments.access` (404 unknown, 403 changing another
user's run). Any authenticated user may read any run: results are meant to be compared.
"""

from __future__ import annotations

from typing import Annotated

from django.db.models import Q
from django.http import FileResponse, Http404, HttpRequest
from ninja import Path, Query, Router, Status

from webapp.experiments import metrics_series, services
from webapp.experiments.access import get_run_for_user
from webapp.experiments.exports import metrics_csv_response
from webapp.experiments.models import Run

from .auth import user_of
from .schemas import (
    INT32_MAX,
    PAGE_LIMIT_MAX,
    EvaluationOut,
    MessageOut,
    MetricsOut,
    RunDetailOut,
    RunPage,
    Text,
    run_data,
    run_detail_data,
)

router = Router()

MAX_ID = 2**63 - 1
MAX_NAMES = 50
RunId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.get("", response=RunPage, summary="List runs, newest first, with filters")
def list_runs(
    request: HttpRequest,
    status: Annotated[Run.Status | None, Query()] = None,
    dataset: Annotated[Text | None, Query(max_length=32)] = None,
    algorithm: Annotated[Text | None, Query(max_length=16)] = None,
    owner: Annotated[Text | None, Query(max_length=150, description="username")] = None,
    search: Annotated[
        Text | None, Query(max_length=200, description="experiment name or text")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX)] = 50,
    offset: Annotated[int, Query(ge=0, le=INT32_MAX)] = 0,
):
    runs = Run.objects.select_related("experiment__owner")
    if status:
        runs = runs.filter(status=status)
    if dataset:
        runs = runs.filter(dataset=dataset)
    if algorithm:
        runs = runs.filter(algorithm=algorithm)
    if owner:
        runs = runs.filter(experiment__owner__username=owner)
    if search and search.strip():
        text = search.strip()
        runs = runs.filter(
            Q(experiment__name__icontains=text) | Q(experiment__description__icontains=text)
        )
    count = runs.count()
    user = user_of(request)
    return {
        "count": count,
        "limit": limit,
        "offset": offset,
        "items": [run_data(run, user) for run in runs[offset : offset + limit]],
    }


@router.get("/{run_id}", response=RunDetailOut, summary="One run, with its full config")
def get_run(request: HttpRequest, run_id: RunId):
    return run_detail_data(get_run_for_user(user_of(request), run_id), user_of(request))


@router.post(
    "/{run_id}/cancel",
    response={200: RunDetailOut, 409: MessageOut},
    summary="Cancel a run (owner or staff)",
)
def cancel_run(request: HttpRequest, run_id: RunId):
    """A queued or lost run is cancelled at once; a running one is asked to stop (it
    checkpoints and ends `cancelled`, see `cancel_requested`). Cancelling a cancelled run is a
    no-op; a succeeded or failed run cannot be cancelled (409)."""
    user = user_of(request)
    run = get_run_for_user(user, run_id, for_change=True)
    if run.status in (Run.Status.SUCCEEDED, Run.Status.FAILED):
        return Status(409, {"detail": f"Run #{run.pk} already {run.status}; nothing to cancel."})
    run = services.request_cancel(run)
    return Status(200, run_detail_data(run, user))


@router.get("/{run_id}/metrics", response=MetricsOut, summary="Metric series for charts")
def run_metrics(
    request: HttpRequest,
    run_id: RunId,
    names: Annotated[
        list[Text] | None,
        Query(description="series to return (repeat or comma-separate); default: all"),
    ] = None,
    after_step: Annotated[
        int | None,
        Query(ge=-INT32_MAX, le=INT32_MAX, description="only raw points after this step"),
    ] = None,
    max_points: Annotated[int, Query(ge=2, le=10_000)] = metrics_series.DEFAULT_MAX_POINTS,
):
    """Without `after_step`, each series is bucketed on the server to at most `max_points`
    points (min, max and last value per bucket; first and last point kept). With it, only the
    raw points after that step (at most `max_points`): a live chart appends them."""
    run = get_run_for_user(user_of(request), run_id)
    all_names = metrics_series.metric_names(run)
    wanted = None
    if names:
        wanted = list(dict.fromkeys(n.strip() for item in names for n in item.split(",")))
        wanted = [n for n in wanted if n]
        if len(wanted) > MAX_NAMES or any(len(n) > 64 for n in wanted):
            from .schemas import FieldErrors

            raise FieldErrors([("names", f"At most {MAX_NAMES} names of 64 characters.")])
    data = metrics_series.series(run, wanted, after_step=after_step, max_points=max_points)
    return {"run": run.pk, "names": all_names, "series": data}


@router.get(
    "/{run_id}/evaluations", response=list[EvaluationOut], summary="Validation and test results"
)
def run_evaluations(request: HttpRequest, run_id: RunId):
    run = get_run_for_user(user_of(request), run_id)
    return list(run.evaluations.order_by("iteration", "id"))


@router.get(
    "/{run_id}/initialization",
    response={200: None, 404: MessageOut},
    summary="Download the trained initialization (safetensors)",
    openapi_extra={
        "responses": {
            200: {
                "description": "initialization.safetensors (weights only)",
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        }
    },
)
def run_initialization(request: HttpRequest, run_id: RunId):
    """404 until the run has succeeded and written its weights."""
    run = get_run_for_user(user_of(request), run_id)
    if run.status != Run.Status.SUCCEEDED or not run.initialization:
        raise Http404
    try:
        handle = run.initialization.open("rb")
    except FileNotFoundError:
        raise Http404 from None
    return FileResponse(
        handle,
        as_attachment=True,
        filename=f"run-{run.pk}-initialization.safetensors",
        content_type="application/octet-stream",
    )


@router.get("/{run_id}/config", response=dict, summary="The run's metatrain Config (JSON)")
def run_config(request: HttpRequest, run_id: RunId):
    """The complete config, seed included: `metatrain.Config.from_dict` rebuilds it."""
    return get_run_for_user(user_of(request), run_id).config


@router.get(
    "/{run_id}/metrics.csv",
    response={200: None},
    summary="All metric points as CSV (step, name, value), streamed",
    openapi_extra={
        "responses": {
            200: {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}}
        }
    },
)
def run_metrics_csv(request: HttpRequest, run_id: RunId):
    return metrics_csv_response(get_run_for_user(user_of(request), run_id))
