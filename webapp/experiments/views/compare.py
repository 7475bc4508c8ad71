"""Compare runs: their curves overlaid, and their configs side by side with differences marked."""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from .. import metrics_series
from ..access import dataset_shown, get_run_for_user, visible_config
from ..chart_titles import compare_chart_title
from ..filtering import RunFilters, filter_runs
from ..forms import config_fields
from ..models import Run

MAX_COMPARED = 8
# Fewer points per curve than the run page: several runs share one chart.
COMPARE_MAX_POINTS = 600
CANDIDATES = 50


def selected_ids(request: HttpRequest) -> list[int]:
    """Run ids from `?runs=1&runs=2` or `?runs=1,2`, in order, without duplicates or junk."""
    ids: list[int] = []
    for raw in request.GET.getlist("runs"):
        for part in raw.split(","):
            part = part.strip()
            # isdigit() alone also accepts what int() refuses ('²', 5,000 digits): a 500.
            if part.isascii() and part.isdigit() and len(part) <= 19 and int(part) not in ids:
                ids.append(int(part))
    return ids[:MAX_COMPARED]


def config_diff(runs: list[Run], user) -> list[dict]:
    """One row per config key (seed first, then the form's order): the runs' values and
    whether they differ. JSON text is compared so 1 and 1.0 count as the same.

    Server paths (data_dir) are never shown; a last row names each run's uploaded dataset
    (as `dataset_shown` lets `user` see it) when any of them trains on one."""
    configs = [visible_config(run.config) for run in runs]
    keys: list[str] = []
    for config in configs:
        for key in config:
            if key not in keys:
                keys.append(key)
    order = {name: i for i, name in enumerate(["seed", *config_fields()])}
    keys.sort(key=lambda k: (order.get(k, len(order)), k))
    missing = object()
    rows = []
    uploads = [dataset_shown(user, run.experiment) for run in runs]
    if any(uploads):
        keys.append(UPLOAD_ROW)
        for config, upload in zip(configs, uploads, strict=True):
            config[UPLOAD_ROW] = _upload_label(upload)
    for key in keys:
        values = [config.get(key, missing) for config in configs]
        canonical = {
            "<absent>" if v is missing else json.dumps(float(v) if _is_number(v) else v)
            for v in values
        }
        rows.append(
            {
                "key": key,
                "values": ["—" if v is missing else v for v in values],
                "differs": len(canonical) > 1,
            }
        )
    return rows


UPLOAD_ROW = "uploaded dataset"


def _upload_label(upload: dict | None) -> str:
    if upload is None:
        return "none"
    if upload["name"] is None:
        return f"a private dataset (#{upload['pk']})"
    return f"{upload['name']} (#{upload['pk']})"


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@login_required
def compare(request: HttpRequest) -> HttpResponse:
    runs = [get_run_for_user(request.user, pk) for pk in selected_ids(request)]
    q = request.GET.get("q", "").strip()
    candidates = filter_runs(request.user, RunFilters(q=q))
    chart_data = [
        {
            "id": run.pk,
            "label": f"#{run.pk} {run.experiment.name} (seed {run.seed})",
            "url": run.get_absolute_url(),
            # Where a zoomed chart fetches this run's points of a step window.
            "metrics_url": reverse("api:run_metrics", args=[run.pk]),
            "series": metrics_series.series(run, max_points=COMPARE_MAX_POINTS),
        }
        for run in runs
    ]
    diff = config_diff(runs, request.user) if runs else []
    context = {
        "runs": runs,
        "candidates": candidates[:CANDIDATES],
        "selected": {run.pk for run in runs},
        "q": q,
        "chart_data": chart_data,
        "validation_title": compare_chart_title([run.config for run in runs]),
        "diff_rows": diff,
        "differing": sum(1 for row in diff if row["differs"]),
        "only_diff": request.GET.get("only_diff") == "1",
        "max_compared": MAX_COMPARED,
    }
    return render(request, "experiments/compare.html", context)
