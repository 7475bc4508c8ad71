"""/api/datasets: the uploaded datasets a caller may train on, and one dataset, so API users
can find the id to give as an experiment's `user_dataset`.

Read-only: uploads and deletes go through the pages (/datasets/). Access is decided by
webapp.datasets.access, as for the pages: the list holds the ready datasets the caller may use
(their own and public ones; staff: all), one dataset is found if the caller may see it (their
own in any state, public ready ones) and is 404 otherwise, exactly like one that does not exist.
"""

from __future__ import annotations

from typing import Annotated

from django.http import HttpRequest
from ninja import Path, Query, Router

from webapp.datasets.access import get_dataset_for_user, usable_datasets

from .auth import user_of
from .outputs import dataset_data
from .schemas import INT32_MAX, PAGE_LIMIT_MAX, PK_MAX, DatasetOut, DatasetPage

router = Router()

DatasetId = Annotated[int, Path(ge=1, le=PK_MAX)]


@router.get("", response=DatasetPage, summary="Datasets you may train on, newest first")
def list_datasets(
    request: HttpRequest,
    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX)] = 50,
    offset: Annotated[int, Query(ge=0, le=INT32_MAX)] = 0,
):
    """Ready datasets: yours and the ones others made public. Give an id as `user_dataset`
    when creating an experiment (with dataset imagefolder)."""
    user = user_of(request)
    datasets = usable_datasets(user).order_by("-created_at", "-id")
    return {
        "count": datasets.count(),
        "limit": limit,
        "offset": offset,
        "items": [dataset_data(d, user) for d in datasets[offset : offset + limit]],
    }


@router.get("/{dataset_id}", response=DatasetOut, summary="One dataset you may see")
def get_dataset(request: HttpRequest, dataset_id: DatasetId):
    """Your own in any state (pending, validating, ready, rejected with its reason), or a
    public ready one; 404 for any other."""
    user = user_of(request)
    return dataset_data(get_dataset_for_user(user, dataset_id), user)
