"""The runs table, one run's live page, its metrics feed for the charts, cancel and downloads."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from metatrain import ALGORITHMS

from .. import exports, metrics_series, services
from ..access import can_change, dataset_shown, get_run_for_user, visible_config
from ..artifacts import checkpoint_weights, config_download, download_name, download_response
from ..dispatch import queue_name, queue_served
from ..filtering import SORTS, RunFilters, dataset_names, filter_runs, owner_names
from ..forms import config_fields
from ..models import Run
from ..presentation import format_duration, format_timestamp, round_fraction
from ..run_rows import ROW_FIELDS, run_rows
from .labels import save_labels

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
    """Remaining training time from the measured seconds per meta-iteration (None if unknown,
    and during the final evaluation, which has its own: `Run.eval_eta_seconds`)."""
    if run.status != Run.Status.RUNNING or not run.seconds_per_iteration:
        return None
    if run.phase == Run.Phase.EVALUATING:
        return None
    remaining = max(0, run.total_iterations - run.iteration)
    return remaining * run.seconds_per_iteration


def run_state(run: Run, *, evaluations: bool = False) -> dict:
    """What the live page shows about a run's progress, for the template and the JSON feed;
    with `evaluations`, the Evaluations table's rows as HTML (the live page replaces them)."""
    eta = eta_seconds(run)
    evaluating = run.status == Run.Status.RUNNING and run.phase == Run.Phase.EVALUATING
    eval_eta = run.eval_eta_seconds if evaluating else None
    state = {
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
        "phase": run.phase,
        "evaluating": evaluating,
        "eval_tasks_done": run.eval_tasks_done,
        "eval_tasks_total": run.eval_tasks_total,
        "eval_percent": (
            round(100 * run.eval_tasks_done / run.eval_tasks_total, 1)
            if run.eval_tasks_total
            else 0.0
        ),
        "eval_tasks_per_second": run.eval_tasks_per_second,
        "eval_eta_seconds": eval_eta,
        "eval_eta_display": format_duration(eval_eta),
        "unresponsive": is_unresponsive(run),
        "heartbeat_at": run.heartbeat_at.isoformat() if run.heartbeat_at else None,
        "heartbeat_display": format_timestamp(run.heartbeat_at) or "—",
        "worker": run.worker,
        "device": run.device,
        "test_accuracy": round_fraction(run.test_accuracy),
        "test_ci95": round_fraction(run.test_ci95),
        "can_cancel": services.can_cancel(run),
        "waiting_for": waiting_for(run),
    }
    if evaluations:
        rows = list(run.evaluations.all())
        state["evaluations_count"] = len(rows)
        state["evaluations_html"] = render_to_string(
            "experiments/_evaluation_rows.html", {"evaluations": rows}
        )
    return state


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
    # The page's rows as plain values (run_rows); the count above is of the runs alone, as a
    # values() query would join the experiment and owner tables into it.
    page.object_list = list(page.object_list.values(*ROW_FIELDS))
    context = {
        "page_obj": page,
        "runs": page.object_list,
        "rows": run_rows.rows(page.object_list, filter_runs(request.user, RunFilters())),
        "filters": filters,
        "statuses": Run.Status.choices,
        "datasets": dataset_names(),
        # Every algorithm the library has, by name and label: the filter never depends on
        # which ones happen to have runs.
        "algorithms": [(name, algorithm.label) for name, algorithm in ALGORITHMS.items()],
        "owners": owner_names(),
        "sorts": [(key, label) for key, (label, _) in SORTS.items()],
        "filtered": filters.active,
        "live_ids": [row["id"] for row in page.object_list if row["status"] in Run.ACTIVE_STATUSES],
        "poll_ms": POLL_MS,
    }
    return render(request, "experiments/run_list.html", context)


MAX_LIVE_IDS = RUNS_PER_PAGE


@login_required
@require_GET
def run_list_live(request: HttpRequest) -> JsonResponse:
    """The runs page's live cells (status, progress, duration, speed, result) of the runs
    in `ids` (comma-separated, at most a page), rendered by the same templates as the page;
    `active` says which of them may still change."""
    try:
        ids = [int(x) for x in request.GET.get("ids", "").split(",") if x.strip()]
    except ValueError:
        return JsonResponse({"error": "ids must be comma-separated run numbers"}, status=400)
    if len(ids) > MAX_LIVE_IDS or any(not 0 < i < 2**63 for i in ids):
        return JsonResponse(
            {"error": f"ids: at most {MAX_LIVE_IDS} run numbers, each 1 or more"}, status=400
        )
    runs = filter_runs(request.user, RunFilters(), Run.objects.filter(pk__in=ids))
    data = {
        str(run.pk): {
            "status": render_to_string("experiments/_status.html", {"run": run}),
            "cells": render_to_string("experiments/_run_live_cells.html", {"run": run}),
            "active": run.is_active,
        }
        for run in runs
    }
    return JsonResponse({"runs": data})


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
        "checkpoint_weights": _checkpoint_weights_offered(run),
        "can_evaluate_now": services.can_evaluate_now(run),
        "labels_url": reverse("run-labels", args=[run.pk]),
        "load_snippet": load_snippet(run),
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
    state = run_state(run, evaluations=True)
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


def load_snippet(run: Run) -> str:
    """The loader snippet with this run's download names (run-42-o5w1s-seed0-config.json...)."""
    return LOAD_SNIPPET.replace(
        'open("config.json")', f'open("{download_name(run, "config.json")}")'
    ).replace(
        'load_file("initialization.safetensors")',
        f'load_file("{download_name(run, "initialization.safetensors")}")',
    )


def _checkpoint_weights_offered(run: Run) -> bool:
    """A cancelled or failed run's checkpoint holds trained weights worth downloading."""
    return run.status in services.EVALUABLE and bool(run.checkpoint_file)


@login_required
@require_GET
def run_download(request: HttpRequest, pk: int, artifact: str) -> HttpResponse:
    """A run's trained initialization or its config.json (once it succeeded; for a cancelled
    or failed run, taken from its last checkpoint), or its metric points as CSV (any time: a
    partial run's curves are still worth having). Files are named after the run
    (`artifacts.download_name`); config.json records the run and its results."""
    run = get_run_for_user(request.user, pk)
    if artifact == "metrics.csv":
        return exports.metrics_csv_response(run)
    field_name = ARTIFACTS.get(artifact)
    if field_name is None:
        raise Http404("No such download.")
    filename = download_name(run, artifact)
    if _checkpoint_weights_offered(run) and not run.initialization:
        try:
            files = checkpoint_weights(run)
        except FileNotFoundError:
            raise Http404("The run's checkpoint is missing from storage.") from None
        return _attachment(run, artifact, files[artifact], filename)
    stored = getattr(run, field_name)
    if run.status != Run.Status.SUCCEEDED or not stored:
        raise Http404("This run has no such file yet: downloads appear when it succeeds.")
    if artifact == "config.json":
        try:
            with stored.open("rb") as fh:
                content = fh.read()
        except FileNotFoundError:
            raise Http404("The file is missing from storage.") from None
        return _attachment(run, artifact, content, filename)
    return download_response(stored, filename, "application/octet-stream")


def _attachment(run: Run, artifact: str, content: bytes, filename: str) -> HttpResponse:
    if artifact == "config.json":
        content = config_download(run, content)
        content_type = "application/json"
    else:
        content_type = "application/octet-stream"
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@login_required
@require_POST
def run_evaluate(request: HttpRequest, pk: int) -> HttpResponse:
    """ "Evaluate now": the same rule as POST /api/runs/{id}/evaluate (services.evaluate_now)."""
    run = get_run_for_user(request.user, pk, for_change=True)
    try:
        run = services.evaluate_now(run)
    except services.ServiceError as err:
        messages.error(request, str(err))
        return redirect(run)
    messages.success(
        request,
        f"Run #{run.pk} is queued to evaluate its checkpoint (iteration "
        f"{run.checkpoint_iteration}); training is not resumed.",
    )
    return redirect(run)


@login_required
@require_POST
def run_labels(request: HttpRequest, pk: int) -> HttpResponse:
    """Rename a run, edit its notes and tags (owner or staff)."""
    run = get_run_for_user(request.user, pk, for_change=True)
    return save_labels(request, run, f"Run #{run.pk} saved.")
