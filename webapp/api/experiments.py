"""/api/experiments: create (one queued run per seed), list and search, read, label, delete."""

from __future__ import annotations

from typing import Annotated

from django.db import DataError
from django.db.models import Prefetch
from django.http import HttpRequest
from ninja import Path, Query, Router, Status

from webapp.experiments import services
from webapp.experiments.access import get_experiment_for_user
from webapp.experiments.filtering import filter_experiments
from webapp.experiments.models import Experiment, Run

from .auth import user_of
from .labels import set_labels_or_422
from .outputs import experiment_data
from .schemas import (
    INT32_MAX,
    PAGE_LIMIT_MAX,
    ExperimentIn,
    ExperimentOut,
    ExperimentPage,
    FieldErrors,
    LabelsIn,
    MessageOut,
    QuotaErrorOut,
    Text,
    ValidationErrorOut,
)

router = Router()

ExperimentId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def _with_runs(queryset):
    return queryset.select_related("owner", "user_dataset").prefetch_related(
        Prefetch("runs", queryset=Run.objects.order_by("id"))
    )


@router.post(
    "",
    response={201: ExperimentOut, 409: QuotaErrorOut, 422: ValidationErrorOut},
    summary="Create an experiment: one queued run per seed",
)
def create_experiment(request: HttpRequest, payload: ExperimentIn):
    """The config is the preset (if any) with `overrides` applied. Everything is checked by
    the same service as the browser form, and every error is reported in one 422 (config
    fields as `overrides.<field>`). A request that would pass one of your quotas is refused
    with 409, naming the limit and your usage. Nothing is saved unless all is well; the runs
    are queued once the transaction commits."""
    try:
        experiment = services.create_experiment(
            user_of(request),
            name=payload.name,
            description=payload.description,
            preset=payload.preset,
            config=payload.overrides,
            seeds=payload.seeds,
            queue=payload.queue,
            user_dataset=payload.user_dataset,
        )
    except DataError:  # a value the database refuses: a bug upstream, but never a 500
        raise FieldErrors([(None, "A value is out of range for the database.")]) from None
    experiment = _with_runs(Experiment.objects).get(pk=experiment.pk)
    return Status(201, experiment_data(experiment, user_of(request)))


@router.get("", response=ExperimentPage, summary="List experiments, newest first")
def list_experiments(
    request: HttpRequest,
    owner: Annotated[
        Text | None, Query(max_length=150, description="a username, or `me` for your own")
    ] = None,
    q: Annotated[
        Text | None, Query(max_length=200, description="text in the name, description or notes")
    ] = None,
    tag: Annotated[Text | None, Query(max_length=100, description="one of its tags")] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX)] = 50,
    offset: Annotated[int, Query(ge=0, le=INT32_MAX)] = 0,
):
    """The experiments page's search: `q`, `tag`, `owner` (as the runs list: `me` for yours)."""
    experiments = filter_experiments(
        q=q or "", tag=tag or "", owner=owner or "", user=user_of(request)
    )
    count = experiments.count()
    page = _with_runs(experiments)[offset : offset + limit]
    user = user_of(request)
    return {
        "count": count,
        "limit": limit,
        "offset": offset,
        "items": [experiment_data(e, user) for e in page],
    }


@router.get("/{experiment_id}", response=ExperimentOut, summary="One experiment with its runs")
def get_experiment(request: HttpRequest, experiment_id: ExperimentId):
    experiment = get_experiment_for_user(user_of(request), experiment_id)
    experiment = _with_runs(Experiment.objects).get(pk=experiment.pk)
    return experiment_data(experiment, user_of(request))


@router.patch(
    "/{experiment_id}",
    response={200: ExperimentOut, 422: ValidationErrorOut},
    summary="Rename an experiment, edit its notes and tags (owner or staff)",
)
def label_experiment(request: HttpRequest, experiment_id: ExperimentId, payload: LabelsIn):
    user = user_of(request)
    experiment = get_experiment_for_user(user, experiment_id, for_change=True)
    set_labels_or_422(experiment, payload)
    experiment = _with_runs(Experiment.objects).get(pk=experiment.pk)
    return experiment_data(experiment, user)


@router.delete(
    "/{experiment_id}",
    response={204: None, 409: MessageOut},
    summary="Delete an experiment, its runs and files (owner or staff)",
)
def delete_experiment(request: HttpRequest, experiment_id: ExperimentId):
    experiment = get_experiment_for_user(user_of(request), experiment_id, for_change=True)
    try:
        services.delete_experiment(experiment)
    except services.ServiceError as exc:
        return Status(409, {"detail": str(exc)})
    return Status(204, None)
