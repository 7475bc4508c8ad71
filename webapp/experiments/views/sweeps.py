"""Sweeps in the browser: define one (or start from the experiment form's values), follow
its runs and results, cancel it, clone it."""

from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from ..access import can_change, get_sweep_for_user
from ..errors import QuotaExceeded, ServiceError
from ..forms import ExperimentForm
from ..models import Run, Sweep
from ..sweeps import service
from ..sweeps.forms import SweepForm
from ..sweeps.results import chart_data, configurations
from .experiments import _form_page as experiment_form_page


def _form_page(request, form, *, cloned_from=None) -> HttpResponse:
    return render(
        request, "experiments/sweep_form.html", {"form": form, "cloned_from": cloned_from}
    )


def _submit(request: HttpRequest, *, cloned_from: Sweep | None = None) -> HttpResponse:
    """Check the form; with "Count runs" show the plan, else save and go to the sweep."""
    form = SweepForm(request.POST, user=request.user)
    if form.is_valid() and "save" in request.POST:
        try:
            sweep = service.create_sweep(request.user, cloned_from=cloned_from, **form.spec)
        except QuotaExceeded as err:
            form.add_error(None, str(err))
        except ServiceError as err:
            form.add_service_errors(getattr(err, "errors", [(err.field, str(err))]))
        else:
            queued = sweep.experiments.count()
            messages.success(
                request,
                f"Sweep saved: {form.plan.runs if form.plan else 0} runs planned; "
                f"the first {queued} configuration{'s' if queued != 1 else ''} queued.",
            )
            return redirect(sweep)
    return _form_page(request, form, cloned_from=cloned_from)


@login_required
def sweep_new(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _submit(request)
    return _form_page(request, SweepForm(user=request.user))


@login_required
@require_POST
def sweep_from_experiment(request: HttpRequest) -> HttpResponse:
    """The experiment form's "Sweep from these settings": its values become the sweep's base
    (checked as an experiment first); the fields to vary are chosen on the sweep form."""
    form = ExperimentForm(request.POST, user=request.user)
    if not form.is_valid():
        return experiment_form_page(request, form)
    data = form.cleaned_data
    if data.get("user_dataset"):
        # Sweeps train on the installed data only: never let one quietly drop the upload.
        form.add_error(
            "user_dataset",
            "A sweep cannot train on an uploaded dataset yet; save an experiment per "
            "configuration instead, or choose the installed data.",
        )
        return experiment_form_page(request, form)
    initial = {
        "name": data["name"],
        "description": data["description"],
        "preset": data["preset"] or "",
        "base_config": json.dumps(form.config, indent=1) if form.config else "",
        "seeds": ", ".join(str(s) for s in form.seeds_list),
        "queue": data["queue"],
    }
    return _form_page(request, SweepForm(initial=initial, user=request.user))


@login_required
def sweep_clone(request: HttpRequest, pk: int) -> HttpResponse:
    """The form pre-filled with another sweep's settings; saving makes a new sweep."""
    source = get_sweep_for_user(request.user, pk)
    if request.method == "POST":
        return _submit(request, cloned_from=source)
    form = SweepForm(initial=SweepForm.initial_from_sweep(source), user=request.user)
    return _form_page(request, form, cloned_from=source)


@login_required
def sweep_list(request: HttpRequest) -> HttpResponse:
    page = Paginator(Sweep.objects.select_related("owner"), 50).get_page(request.GET.get("page"))
    return render(request, "experiments/sweep_list.html", {"page": page})


@login_required
def sweep_detail(request: HttpRequest, pk: int) -> HttpResponse:
    sweep = get_sweep_for_user(request.user, pk)
    configs = configurations(sweep)
    progress = service.sweep_progress(sweep)
    fields = list(sweep.space)
    context = {
        "sweep": sweep,
        "rows": [(c, [c.params.get(f) for f in fields]) for c in configs],
        "fields": fields,
        "progress": progress,
        "finished": service.is_finished(progress, sweep),
        "active_runs": sum(progress[s] for s in service.ACTIVE),
        "can_change": can_change(request.user, sweep),
        "chart_data": chart_data(sweep, configs),
        "recent_runs": Run.objects.filter(experiment__sweep=sweep)
        .select_related("experiment")
        .order_by("-id")[:20],
        "status_counts": [(v, label, progress[v]) for v, label in Run.Status.choices],
    }
    return render(request, "experiments/sweep_detail.html", context)


@login_required
@require_POST
def sweep_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    sweep = get_sweep_for_user(request.user, pk, for_change=True)
    counts = service.cancel_sweep(sweep)
    messages.success(
        request,
        f"Sweep cancelled: {counts['cancelled']} queued runs cancelled, "
        f"{counts['stopping']} running runs asked to stop; no new configurations.",
    )
    return redirect(sweep)
