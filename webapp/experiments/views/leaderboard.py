"""The leaderboard: one board per benchmark, one row per configuration (its seeds grouped), the
paper's number as a reference row on each."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.template.loader import render_to_string

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
