"""The one place that decides who may see, use or change an uploaded dataset.

See and train on: its owner, staff, and (once it is ready) every logged-in user if its owner
made it public. Change (delete): the owner or staff only. Every view fetches datasets through
these helpers so none forgets the check; an experiment form should list `usable_datasets(user)`
and re-check the chosen one with `get_usable_dataset`.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404

from .models import UserDataset


def can_change(user, dataset: UserDataset) -> bool:
    return bool(user.is_authenticated and (user.is_staff or dataset.owner_id == user.pk))


def can_view(user, dataset: UserDataset) -> bool:
    return can_change(user, dataset) or bool(
        user.is_authenticated and dataset.is_public and dataset.is_ready
    )


def visible_datasets(user) -> QuerySet[UserDataset]:
    """Datasets `user` may see: their own (any state) and public ready ones; staff see all."""
    datasets = UserDataset.objects.select_related("owner")
    if not user.is_authenticated:
        return datasets.none()
    if user.is_staff:
        return datasets
    return datasets.filter(Q(owner=user) | Q(is_public=True, status=UserDataset.Status.READY))


def usable_datasets(user) -> QuerySet[UserDataset]:
    """Ready datasets `user` may train on: the choices for an experiment's `user_dataset`."""
    return visible_datasets(user).filter(status=UserDataset.Status.READY)


def get_dataset_for_user(user, pk: int, *, for_change: bool = False) -> UserDataset:
    """The dataset, or 404 when `user` may not see it; PermissionDenied (403) when changing
    one that is not theirs."""
    dataset = get_object_or_404(UserDataset.objects.select_related("owner"), pk=pk)
    if for_change:
        if not can_change(user, dataset):
            raise PermissionDenied("Only the dataset's owner can change it.")
    elif not can_view(user, dataset):
        raise Http404("No such dataset.")
    return dataset


def get_usable_dataset(user, pk: int) -> UserDataset | None:
    """The ready dataset `pk` if `user` may train on it, else None (for services and forms)."""
    return usable_datasets(user).filter(pk=pk).first()
