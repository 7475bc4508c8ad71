"""PATCH of an experiment's or a run's name, notes and tags, shared by both routers."""

from __future__ import annotations

from webapp.experiments import services
from webapp.experiments.models import Experiment, Run

from .schemas import FieldErrors, LabelsIn


def set_labels_or_422(obj: Experiment | Run, payload: LabelsIn) -> None:
    """Apply the payload through the service; its field errors become the API's 422 under
    the payload's own names (not `overrides.*` as for config fields)."""
    try:
        services.set_labels(obj, name=payload.name, notes=payload.notes, tags=payload.tags)
    except services.ValidationFailed as exc:
        raise FieldErrors(list(exc.errors)) from None
