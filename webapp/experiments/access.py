"""The one place that decides who may see or change a run or an experiment.

Public (any logged-in user): every experiment, run, metric series, evaluation and artifact, and
the leaderboard. This is a shared research dashboard: results are meant to be compared.
Owner or staff only: cancel, delete, and anything else that changes state.
Every view and API endpoint fetches objects through these helpers so none forgets the check.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404

from .models import Experiment, Run


def can_change(user, obj: Experiment | Run) -> bool:
    owner_id = obj.owner_id if isinstance(obj, Experiment) else obj.experiment.owner_id
    return bool(user.is_authenticated and (user.is_staff or owner_id == user.pk))


def get_experiment_for_user(user, pk: int, *, for_change: bool = False) -> Experiment:
    """The experiment, or 404; PermissionDenied (403) when changing someone else's."""
    experiment = get_object_or_404(Experiment.objects.select_related("owner"), pk=pk)
    if for_change and not can_change(user, experiment):
        raise PermissionDenied("Only the experiment's owner can change it.")
    return experiment


def get_run_for_user(user, pk: int, *, for_change: bool = False) -> Run:
    """The run, or 404; PermissionDenied (403) when changing someone else's."""
    run = get_object_or_404(Run.objects.select_related("experiment__owner"), pk=pk)
    if for_change and not can_change(user, run):
        raise PermissionDenied("Only the run's owner can change it.")
    return run
