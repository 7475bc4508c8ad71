"""The one place that decides who may see or change a run, an experiment or a sweep.

Public (any logged-in user): every experiment, run, metric series, evaluation and artifact, and
the leaderboard. This is a shared research dashboard: results are meant to be compared.
Owner or staff only: cancel, delete, and anything else that changes state.
Every view and API endpoint fetches objects through these helpers so none forgets the check.

Never shown to users, in any page or API answer: a config's `data_dir`, a path on the server
(an uploaded dataset's folder, another user's private one included). `visible_config` drops it;
`dataset_shown` names the uploaded dataset instead, to whoever may see it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404

from webapp.datasets.access import can_view as can_view_dataset
from webapp.datasets.models import UserDataset

from .models import Experiment, Run, Sweep


def can_change(user, obj: Experiment | Run | Sweep) -> bool:
    owner_id = obj.experiment.owner_id if isinstance(obj, Run) else obj.owner_id
    return may_change(user, owner_id)


def may_change(user, owner_id: int) -> bool:
    """The rule behind can_change, for a list that read only the owner's id."""
    return bool(user.is_authenticated and (user.is_staff or owner_id == user.pk))


def get_experiment_for_user(user, pk: int, *, for_change: bool = False) -> Experiment:
    """The experiment, or 404; PermissionDenied (403) when changing someone else's."""
    experiment = get_object_or_404(Experiment.objects.select_related("owner"), pk=pk)
    if for_change and not can_change(user, experiment):
        raise PermissionDenied("Only the experiment's owner can change it.")
    return experiment


def get_run_for_user(user, pk: int, *, for_change: bool = False) -> Run:
    """The run, or 404; PermissionDenied (403) when changing someone else's."""
    run = get_object_or_404(
        Run.objects.select_related("experiment__owner", "experiment__user_dataset"), pk=pk
    )
    if for_change and not can_change(user, run):
        raise PermissionDenied("Only the run's owner can change it.")
    return run


def get_sweep_for_user(user, pk: int, *, for_change: bool = False) -> Sweep:
    """The sweep, or 404; PermissionDenied (403) when changing someone else's."""
    sweep = get_object_or_404(Sweep.objects.select_related("owner"), pk=pk)
    if for_change and not can_change(user, sweep):
        raise PermissionDenied("Only the sweep's owner can change it.")
    return sweep


# Config keys that hold server paths. Runs made before the worker resolved datasets per host
# carry the folder of their upload here; newer ones may carry no data_dir at all.
PRIVATE_CONFIG_KEYS = frozenset({"data_dir"})


def visible_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A run's or an experiment's config as users see it: without server paths. It still
    rebuilds the same `metatrain.Config` (data_dir then takes its default) apart from where
    the data is read."""
    return {k: v for k, v in config.items() if k not in PRIVATE_CONFIG_KEYS}


def dataset_shown(user, experiment: Experiment) -> dict[str, Any] | None:
    """The uploaded dataset an experiment trains on, as users are shown it: {"pk", "name",
    "url"} for whoever may see the dataset; for anyone else only its id, name and url None
    (experiments are public, a private dataset's name is not). None without an upload."""
    return shown_dataset(user, experiment.user_dataset)


def shown_dataset(user, dataset: UserDataset | None) -> dict[str, Any] | None:
    """`dataset_shown` for a dataset already in hand (a list loads its datasets at once)."""
    if dataset is None:
        return None
    if can_view_dataset(user, dataset):
        return {"pk": dataset.pk, "name": dataset.name, "url": dataset.get_absolute_url()}
    return {"pk": dataset.pk, "name": None, "url": None}
