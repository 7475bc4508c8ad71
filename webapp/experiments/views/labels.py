"""The name, notes and tags form of a run's or an experiment's page: one handler for both."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect

from .. import services


def save_labels(request: HttpRequest, obj, saved: str) -> HttpResponse:
    """Apply the posted name, notes and tags to `obj` (already checked as the user's to change)
    and go back to its page with `saved` or the reason it was refused."""
    try:
        services.set_labels(
            obj,
            name=request.POST.get("name", ""),
            notes=request.POST.get("notes", ""),
            tags=request.POST.get("tags", ""),
        )
    except services.ServiceError as err:
        messages.error(request, str(err))
    else:
        messages.success(request, saved)
    return redirect(obj)
