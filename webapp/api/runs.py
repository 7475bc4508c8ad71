"""/api/runs: list with filters, read, label, cancel, evaluate now, metric series, evaluations
and downloads.

Every run is fetched through `webapp.experiments.access` (404 unknown, 403 changing another
user's run). Any authenticated user may read any run: results are meant to be compared. The
list's filters are the runs page's (webapp.experiments.filtering), the cancel rule is the run
page's (services.cancel_run), and no answer shows a server path (data_dir).
"""

from __future__ import annotations

from typing import Annotated, Literal

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from ninja import Path, Query, Router, Status

from metatrain.checkpoint import INITIALIZATION_FILE
from webapp.experiments import metrics_series, series_summaries, services
from webapp.experiments.access import get_run_for_user, visible_config
from webapp.experiments.artifacts import checkpoint_weights, download_name, download_response
from webapp.experiments.errors import QuotaExceeded
from webapp.experiments.exports import metrics_csv_response
from webapp.experiments.filtering import DEFAULT_SORT, SORTS, RunFilters, filter_runs
from webapp.experiments.models import Run

from .auth import user_of
from .labels import set_labels_or_422
from .outputs import (
    evaluation_data,
    kept_metrics_response,
    run_detail_data,
    run_list_data,
    series_data,
)
from .schemas import (
    INT32_MAX,
    PAGE_LIMIT_MAX,
    EvaluationOut,
    FieldErrors,
    LabelsIn,
    MessageOut,
    MetricsOut,
    QuotaErrorOut,
    RunDetailOut,
    RunPage,
    Text,
    ValidationErrorOut,
)

router = Router()

MAX_ID = 2**63 - 1
MAX_NAMES = 50
RunId = Annotated[int, Path(ge=1, le=MAX_ID)]


SortKey = Literal[tuple(SORTS)]  # type: ignore[valid-type]


@router.get("", response=RunPage, summary="List runs, newest first, with filters")
def list_runs(
    request: HttpRequest,
    status: Annotated[Run.Status | None, Query()] = None,
    dataset: Annotated[Text | None, Query(max_length=32)] = None,
    algorithm: Annotated[Text | None, Query(max_length=16)] = None,
    owner: Annotated[
        Text | None, Query(max_length=150, description="a username, or `me` for your own")
    ] = None,
    q: Annotated[
        Text | None,
        Query(
            max_length=200,
            description="text in the run's or experiment's name, description or notes",
        ),
    ] = None,
    search: Annotated[
        Text | None,
        Query(max_length=200, deprecated=True, description="the old name of `q`"),
    ] = None,
    tag: Annotated[
        Text | None, Query(max_length=100, description="a tag of the run or its experiment")
    ] = None,
    sort: Annotated[SortKey, Query(description="as on the runs page")] = DEFAULT_SORT,
    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX)] = 50,
    offset: Annotated[int, Query(ge=0, le=INT32_MAX)] = 0,
):
    """The runs page's filters under the same names (`q` as on the page; `search`, its old
    name here, still works when `q` is absent)."""
    user = user_of(request)
    filters = RunFilters(
        status=status or "",
        dataset=dataset or "",
        algorithm=algorithm or "",
        owner=owner or "",
        q=(q if q is not None else search) or "",
        tag=tag or "",
        sort=sort,
    )
    runs = filter_runs(user, filters)
    return {
        "count": runs.count(),
        "limit": limit,
        "offset": offset,
        "items": run_list_data(runs[offset : offset + limit], user),
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
    checkpoints and ends `cancelled`, see `cancel_requested`). Cancelling a cancelled run
    changes nothing (200); a succeeded or failed run cannot be cancelled (409). The run page's
    button follows the same rule (`can_cancel`)."""
    user = user_of(request)
    run = get_run_for_user(user, run_id, for_change=True)
    try:
        run = services.cancel_run(run)
    except services.ServiceError as exc:
        return Status(409, {"detail": str(exc)})
    return Status(200, run_detail_data(run, user))


@router.patch(
    "/{run_id}",
    response={200: RunDetailOut, 422: ValidationErrorOut},
    summary="Rename a run, edit its notes and tags (owner or staff)",
)
def label_run(request: HttpRequest, run_id: RunId, payload: LabelsIn):
    """Fields left out stay as they are; an empty `name` falls back to the experiment's."""
    user = user_of(request)
    run = get_run_for_user(user, run_id, for_change=True)
    set_labels_or_422(run, payload)
    return run_detail_data(run, user)


@router.post(
    "/{run_id}/evaluate",
    response={200: RunDetailOut, 409: MessageOut | QuotaErrorOut},
    summary="Evaluate a cancelled or failed run's last checkpoint (owner or staff)",
)
def evaluate_run(request: HttpRequest, run_id: RunId):
    """The run is queued again, flagged to skip the training it has left: a worker claims it
    as any run, evaluates its last checkpoint on the test split (`phase` "evaluating", with
    progress), stores its initialization, and the run ends succeeded. 409 unless the run is
    cancelled or failed with a checkpoint (`can_evaluate_now`), or when a quota is full."""
    user = user_of(request)
    run = get_run_for_user(user, run_id, for_change=True)
    try:
        run = services.evaluate_now(run)
    except QuotaExceeded:
        raise
    except services.ServiceError as exc:
        return Status(409, {"detail": str(exc)})
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
    from_step: Annotated[
        int | None,
        Query(ge=-INT32_MAX, le=INT32_MAX, description="only steps >= this (a zoomed window)"),
    ] = None,
    to_step: Annotated[
        int | None,
        Query(ge=-INT32_MAX, le=INT32_MAX, description="only steps <= this (a zoomed window)"),
    ] = None,
):
    """Without `after_step`, each series is bucketed on the server to at most `max_points`
    points (min, max and last value per bucket; first and last point kept). With it, only the
    raw points after that step (at most `max_points`): a live chart appends them.
    `from_step`/`to_step` restrict either form to a window of steps: a zoomed chart fetches its
    range at full resolution (up to `max_points`)."""
    wanted = None
    if names:
        wanted = list(dict.fromkeys(n.strip() for item in names for n in item.split(",")))
        wanted = [n for n in wanted if n]
        if len(wanted) > MAX_NAMES or any(len(n) > 64 for n in wanted):
            raise FieldErrors([("names", f"At most {MAX_NAMES} names of 64 characters.")])
    if from_step is not None and to_step is not None and from_step > to_step:
        raise FieldErrors([("to_step", "to_step must be at least from_step.")])
    if after_step is not None and wanted is None:
        # A live page's poll: one query (the run's existence with its new points).
        found = metrics_series.live_tail(
            run_id, after_step, max_points, from_step=from_step, to_step=to_step
        )
        if found is None:
            raise Http404
        return {"run": run_id, "names": found[0], "series": series_data(found[1])}
    # Any signed-in caller may read any run's series: only its existence, status and attempt
    # matter here, so the row is read without its config or joins.
    run = get_object_or_404(Run.objects.only("id", "status", "attempts"), pk=run_id)
    all_names = metrics_series.metric_names(run)
    if after_step is None and from_step is None and to_step is None:
        # A stopped run's whole series, kept once computed: sent as stored.
        shown = all_names if wanted is None else wanted
        kept = series_summaries.load_json(run, shown, max_points)
        if shown and len(kept) == len(shown):
            return kept_metrics_response(run.pk, all_names, {n: kept[n] for n in shown})
    data = metrics_series.series(
        run,
        all_names if wanted is None else wanted,  # the names are read once, above
        after_step=after_step,
        max_points=max_points,
        from_step=from_step,
        to_step=to_step,
    )
    return {"run": run.pk, "names": all_names, "series": series_data(data)}


@router.get(
    "/{run_id}/evaluations", response=list[EvaluationOut], summary="Validation and test results"
)
def run_evaluations(request: HttpRequest, run_id: RunId):
    run = get_run_for_user(user_of(request), run_id)
    return [evaluation_data(e) for e in run.evaluations.order_by("iteration", "id")]


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
    """Once the run has succeeded, its trained initialization; for a cancelled or failed run
    that stopped before (`has_checkpoint_weights`), the weights of its last checkpoint. 404
    otherwise. Named after the run (run-42-o5w1s-seed0-initialization.safetensors)."""
    run = get_run_for_user(user_of(request), run_id)
    filename = download_name(run, INITIALIZATION_FILE)
    if run.status in services.EVALUABLE and run.checkpoint_file and not run.initialization:
        try:
            content = checkpoint_weights(run)[INITIALIZATION_FILE]
        except FileNotFoundError:
            raise Http404 from None
        response = HttpResponse(content, content_type="application/octet-stream")
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response
    if run.status != Run.Status.SUCCEEDED or not run.initialization:
        raise Http404
    return download_response(run.initialization, filename, "application/octet-stream")


@router.get("/{run_id}/config", response=dict, summary="The run's metatrain Config (JSON)")
def run_config(request: HttpRequest, run_id: RunId):
    """The config, seed included, without server paths (`data_dir`):
    `metatrain.Config.from_dict` rebuilds it, reading its data from the default folder. The
    uploaded dataset a run trains on is named in GET /api/runs/{id} (`user_dataset`)."""
    return visible_config(get_run_for_user(user_of(request), run_id).config)


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
