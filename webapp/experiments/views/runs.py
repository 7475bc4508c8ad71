"""The runs table, one run's live page, its metrics feed for the charts, cancel and downloads."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from metatrain import ALGORITHMS

from .. import exports, metrics_series, services
from ..access import can_change, dataset_shown, get_run_for_user, visible_config
from ..artifacts import download_response
from ..dispatch import queue_name, queue_served
from ..filtering import SORTS, RunFilters, filter_runs
from ..forms import config_fields
from ..models import Run
from ..presentation import round_fraction

RUNS_PER_PAGE = 25
POLL_MS = 3000  # how often a live run page asks for new points

ARTIFACTS = {
    "initialization.safetensors": "initialization",
    "config.json": "config_file",
}

# How a user loads a trained initialization without this project (torch + safetensors only).
# The same standalone loader the README shows, kept in one file and tested against metatrain.
LOAD_SNIPPET = (settings.BASE_DIR / "docs" / "load_initialization.py").read_text()


def is_unresponsive(run: Run, now=None) -> bool:
    """A running run whose worker has not written a heartbeat for 3 heartbeat periods.

    It may still recover; after RUN_LOST_AFTER_SECONDS the worker side marks it lost."""
    if run.status != Run.Status.RUNNING:
        return False
    last = run.heartbeat_at or run.started_at
    if last is None:
        return False
    now = now or timezone.now()
    return now - last > timedelta(seconds=3 * settings.RUN_HEARTBEAT_SECONDS)


def eta_seconds(run: Run) -> float | None:
    """Remaining training time from the measured seconds per meta-iteration (None if unknown)."""
    if run.status != Run.Status.RUNNING or not run.seconds_per_iteration:
        return None
    remaining = max(0, run.total_iterations - run.iteration)
    return remaining * run.seconds_per_iteration


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def run_state(run: Run) -> dict:
    """What the live page shows about a run's progress, for the template and the JSON feed."""
    eta = eta_seconds(run)
    return {
        "id": run.pk,
        "status": run.status,
        "status_display": run.get_status_display(),
        "status_reason": run.status_reason,
        "attempts": run.attempts,
        "is_final": run.status in Run.FINAL_STATUSES,
        "cancel_requested": run.cancel_requested,
        "iteration": run.iteration,
        "total_iterations": run.total_iterations,
        "progress_percent": round(100 * run.progress, 1),
        "seconds_per_iteration": run.seconds_per_iteration,
        "eta_seconds": eta,
        "eta_display": format_duration(eta),
        "unresponsive": is_unresponsive(run),
        "heartbeat_at": run.heartbeat_at.isoformat() if run.heartbeat_at else None,
        "worker": run.worker,
        "device": run.device,
        "test_accuracy": round_fraction(run.test_accuracy),
        "test_ci95": round_fraction(run.test_ci95),
        "can_cancel": services.can_cancel(run),
        "waiting_for": waiting_for(run),
    }


def waiting_for(run: Run) -> str:
    """Why a queued run is not trained yet, when nothing will take it: no live worker serves its
    queue (runs on the gpu queue with only CPU workers, say). Empty otherwise."""
    if run.status != Run.Status.QUEUED or run.cancel_requested:
        return ""
    if queue_served(run.queue):
        return ""
    wanted = {"gpu": "a GPU worker", "cpu": "a CPU worker"}.get(run.queue, "a worker")
    return (
        f"No worker serves the {queue_name(run.queue)} queue: this run waits until {wanted} "
        "starts (manage.py run_worker)."
    )


@login_required
def run_list(request: HttpRequest) -> HttpResponse:
    filters = RunFilters.from_query(request.GET)
    runs = filter_runs(request.user, filters)
    page = Paginator(runs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    owners = (
        get_user_model()
        .objects.filter(experiments__isnull=False)
        .distinct()
        .order_by("username")
        .values_list("username", flat=True)
    )
    context = {
        "page_obj": page,
        "runs": page.object_list,
        "filters": filters,
        "statuses": Run.Status.choices,
        # order_by(): without it the default ordering joins the DISTINCT (one row per run).
        "datasets": sorted(Run.objects.order_by().values_list("dataset", flat=True).distinct()),
        # Every algorithm the library has, by name and label: the filter never depends on
        # which ones happen to have runs.
        "algorithms": [(name, algorithm.label) for name, algorithm in ALGORITHMS.items()],
        "owners": list(owners),
        "sorts": [(key, label) for key, (label, _) in SORTS.items()],
        "filtered": filters.active,
    }
    return render(request, "experiments/run_list.html", context)


def _config_rows(config: dict) -> list[tuple[str, object]]:
    order = {name: i for i, name in enumerate(["seed", *config_fields()])}
    return sorted(config.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))


@login_required
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_run_for_user(request.user, pk)
    context = {
        "run": run,
        "experiment": run.experiment,
        "dataset": dataset_shown(request.user, run.experiment),
        "state": run_state(run),
        "can_change": can_change(request.user, run),
        "config_rows": _config_rows(visible_config(run.config)),
        "attempts": run.attempt_log.all(),
        "evaluations": run.evaluations.all(),
        "artifacts_ready": _artifacts_ready(run),
        "load_snippet": LOAD_SNIPPET,
        "poll_ms": POLL_MS,
    }
    return render(request, "experiments/run_detail.html", context)


def _parse_int(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    return int(raw)


@login_required
@require_GET
def run_metrics(request: HttpRequest, pk: int) -> JsonResponse:
    """The charts' feed: the run's state and its metric series, whole (bucketed) or only the
    points after `after_step`. The state is read first, so once it says the run is finished the
    series already hold every point the run wrote."""
    run = get_run_for_user(request.user, pk)
    try:
        after_step = _parse_int(request.GET.get("after_step"))
    except ValueError:
        return JsonResponse({"error": "after_step must be an integer"}, status=400)
    names_param = request.GET.get("names", "")
    names = [n for n in names_param.split(",") if n] or None
    state = run_state(run)
    data = metrics_series.series(run, names=names, after_step=after_step)
    return JsonResponse({"run": state, "series": data})


@login_required
@require_POST
def run_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    """The same rule as POST /api/runs/{id}/cancel (services.cancel_run)."""
    run = get_run_for_user(request.user, pk, for_change=True)
    try:
        run = services.cancel_run(run)
    except services.ServiceError as err:
        messages.error(request, str(err))
        return redirect(run)
    if run.status == Run.Status.CANCELLED:
        messages.success(request, f"Run #{run.pk} is cancelled.")
    else:
        messages.success(
            request, f"Asked run #{run.pk} to stop; it checkpoints and stops within an iteration."
        )
    return redirect(run)


def _artifacts_ready(run: Run) -> bool:
    return run.status == Run.Status.SUCCEEDED and bool(run.initialization)


@login_required
@require_GET
def run_download(request: HttpRequest, pk: int, artifact: str) -> HttpResponse:
    """A run's trained initialization or its config.json (only once it succeeded), or its
    metric points as CSV (any time: a partial run's curves are still worth having)."""
    run = get_run_for_user(request.user, pk)
    if artifact == "metrics.csv":
        return exports.metrics_csv_response(run)
    field_name = ARTIFACTS.get(artifact)
    if field_name is None:
        raise Http404("No such download.")
    stored = getattr(run, field_name)
    if run.status != Run.Status.SUCCEEDED or not stored:
        raise Http404("This run has no such file yet: downloads appear when it succeeds.")
    content_type = "application/json" if artifact == "config.json" else "application/octet-stream"
    return download_response(stored, artifact, content_type)
