"""Define experiments (new, or cloned from another), list and search them, show one, label
(rename, notes, tags) or delete one."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from webapp.datasets.access import get_usable_dataset

from .. import services
from ..access import can_change, dataset_shown, get_experiment_for_user, visible_config
from ..aggregate import CI_METHOD, seed_stats
from ..filtering import filter_experiments
from ..forms import ExperimentForm, config_fields, presets_for_script
from ..leaderboard import SINGLE_SEED
from ..models import Experiment, Run
from ..seed_curves import BAND, experiment_curves
from .labels import save_labels

# What the "new experiment" page starts from: the paper's headline benchmark.
DEFAULT_PRESET = "omniglot-5way-1shot"


def _save(request: HttpRequest, form: ExperimentForm, cloned_from: Experiment | None):
    """Create the experiment from a valid form; None (with the errors on the form) if the
    service still refuses it: a quota, or something that changed since the form's check."""
    data = form.cleaned_data
    try:
        return services.create_experiment(
            request.user,
            name=data["name"],
            description=data["description"],
            preset=data["preset"] or "",
            config=form.config,
            seeds=form.seeds_list,
            queue=data["queue"],
            cloned_from=cloned_from,
            user_dataset=data.get("user_dataset"),
        )
    except services.ValidationFailed as err:
        form.add_service_errors(err.errors)
    except services.ServiceError as err:  # QuotaExceeded among them
        form.add_service_errors([(err.field, str(err))])
    return None


def _after_create(request: HttpRequest, experiment: Experiment) -> HttpResponse:
    runs = list(experiment.runs.order_by("seed"))
    messages.success(
        request, f"Experiment saved; {len(runs)} run{'s' if len(runs) != 1 else ''} queued."
    )
    # One seed: straight to its live page. Several: the experiment lists them.
    return redirect(runs[0] if len(runs) == 1 else experiment)


def _form_page(request, form, *, cloned_from=None) -> HttpResponse:
    context = {
        "form": form,
        "cloned_from": cloned_from,
        "preset_data": presets_for_script(),
        "config_field_names": config_fields(),
    }
    return render(request, "experiments/experiment_form.html", context)


@login_required
def experiment_new(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = ExperimentForm(request.POST, user=request.user)
        if form.is_valid():
            experiment = _save(request, form, cloned_from=None)
            if experiment is not None:
                return _after_create(request, experiment)
        return _form_page(request, form)
    form = ExperimentForm(initial={"preset": DEFAULT_PRESET}, user=request.user)
    return _form_page(request, form)


@login_required
def experiment_clone(request: HttpRequest, pk: int) -> HttpResponse:
    """A form pre-filled with another experiment's settings; saving makes a new experiment
    (anyone may clone what they can see: the copy is theirs)."""
    source = get_experiment_for_user(request.user, pk)
    if request.method == "POST":
        form = ExperimentForm(request.POST, user=request.user)
        if form.is_valid():
            experiment = _save(request, form, cloned_from=source)
            if experiment is not None:
                return _after_create(request, experiment)
        return _form_page(request, form, cloned_from=source)
    form = ExperimentForm(initial=ExperimentForm.initial_from_experiment(source), user=request.user)
    if source.user_dataset_id and get_usable_dataset(request.user, source.user_dataset_id) is None:
        # The select cannot offer it, and an empty select means the default data: say so
        # rather than let the copy quietly train on something else.
        messages.warning(
            request,
            f"Experiment #{source.pk} trained on an uploaded dataset you cannot use (it is "
            "private, or no longer ready). Choose another uploaded dataset below.",
        )
    return _form_page(request, form, cloned_from=source)


@login_required
def experiment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    experiment = get_experiment_for_user(request.user, pk)
    runs = list(experiment.runs.order_by("seed"))
    scores = [
        r.test_accuracy
        for r in runs
        if r.status == Run.Status.SUCCEEDED and r.test_accuracy is not None
    ]
    context = {
        "experiment": experiment,
        "dataset": dataset_shown(request.user, experiment),
        "runs": runs,
        "can_change": can_change(request.user, experiment),
        # The result of a configuration: the mean over its seeds, with a CI across seeds.
        "final": seed_stats(scores),
        "ci_method": CI_METHOD,
        "single_seed": SINGLE_SEED,
        "curves": experiment_curves(experiment, runs),
        "band": BAND,
        "has_running": any(r.status == Run.Status.RUNNING for r in runs),
        "config_rows": sorted(
            visible_config(experiment.config).items(), key=lambda kv: _field_order(kv[0])
        ),
    }
    return render(request, "experiments/experiment_detail.html", context)


def _field_order(name: str) -> tuple[int, str]:
    names = config_fields()
    return (names.index(name), name) if name in names else (len(names), name)


@login_required
@require_POST
def experiment_delete(request: HttpRequest, pk: int) -> HttpResponse:
    experiment = get_experiment_for_user(request.user, pk, for_change=True)
    name = experiment.name
    try:
        services.delete_experiment(experiment)
    except services.ServiceError as err:
        messages.error(request, str(err))
        return redirect(experiment)
    messages.success(request, f"Deleted experiment {name!r} with its runs and files.")
    return redirect("run-list")


EXPERIMENTS_PER_PAGE = 25


@login_required
def experiment_list(request: HttpRequest) -> HttpResponse:
    """Every experiment (all are readable, like runs), searchable by text, tag and owner."""
    q = (request.GET.get("q") or "").strip()
    tag = (request.GET.get("tag") or "").strip()
    owner = (request.GET.get("owner") or "").strip()
    experiments = filter_experiments(q=q, tag=tag, owner=owner, user=request.user)
    page = Paginator(experiments, EXPERIMENTS_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "page_obj": page,
        "experiments": page.object_list,
        "q": q,
        "tag": tag,
        "owner": owner,
        "filtered": bool(q or tag or owner),
    }
    return render(request, "experiments/experiment_list.html", context)


@login_required
@require_POST
def experiment_labels(request: HttpRequest, pk: int) -> HttpResponse:
    """Rename an experiment, edit its notes and tags (owner or staff)."""
    experiment = get_experiment_for_user(request.user, pk, for_change=True)
    return save_labels(request, experiment, "Experiment saved.")
