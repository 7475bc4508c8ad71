"""The leaderboard: one board per benchmark, one row per configuration (its seeds grouped), the
paper's number as a reference row on each."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.views.decorators.http import require_GET

from .. import leaderboard as boards_module
from .. import leaderboard_cache
from ..aggregate import CI_METHOD


@login_required
def leaderboard(request: HttpRequest) -> HttpResponse:
    """Every benchmark somebody ran, plus the paper's benchmarks nobody has run yet (they show
    only the reference row, so a researcher sees what there is to reproduce). The boards' HTML
    is the same for every user: kept between changes like the boards (leaderboard_cache)."""
    body = leaderboard_cache.kept(("leaderboard-html",), _body)
    return render(request, "experiments/leaderboard.html", {"body": body})


def _body() -> str:
    boards = boards_module.boards(include_reference_only=True)
    context = {
        "boards": boards,
        "ranked_boards": [b for b in boards if b.runs_count],
        "empty_boards": [b for b in boards if not b.runs_count],
        "paper": boards_module.PAPER,
        "ci_method": CI_METHOD,
        "reference_pm": boards_module.REFERENCE_PM,
        "max_rows": boards_module.MAX_ROWS,
    }
    return render_to_string("experiments/_leaderboard_body.html", context)


@login_required
@require_GET
def leaderboard_seeds(request: HttpRequest, key: str, group: str) -> HttpResponse:
    """The seeds behind one row of one board, each a link to its run: with `fragment=1`, the
    list the page inserts when the row's seeds are opened (the page no longer carries every
    row's seeds); otherwise a page of its own, for the toggle's link without JavaScript."""
    try:
        benchmark = boards_module.Benchmark.from_key(key)
    except ValueError:
        raise Http404("No such benchmark.") from None
    runs = boards_module.seed_runs(benchmark, group)
    if not runs:
        raise Http404("No succeeded run of this configuration on this board.")
    context = {"runs": runs, "board": benchmark}
    if request.GET.get("fragment") == "1":  # the page's toggle
        return render(request, "experiments/_seed_runs.html", context)
    return render(request, "experiments/leaderboard_seeds.html", context)  # a link followed
