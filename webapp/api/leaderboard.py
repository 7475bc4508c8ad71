"""GET /api/leaderboard: every benchmark's ranking, accuracies as fractions 0..1."""

from __future__ import annotations

from django.http import Http404, HttpRequest
from ninja import Router

from webapp.experiments import leaderboard

from .outputs import board_data
from .schemas import BoardOut, LeaderboardOut

router = Router()


@router.get("", response=LeaderboardOut, summary="All leaderboards")
def all_boards(request: HttpRequest, include_reference_only: bool = False):
    """Boards with at least one ranked run; `include_reference_only` adds the paper's
    benchmarks that no run has reached yet."""
    boards = leaderboard.boards(include_reference_only=include_reference_only)
    return {"units": "fraction", "boards": [board_data(b) for b in boards]}


@router.get("/{key}", response=BoardOut, summary="One leaderboard by its key")
def one_board(request: HttpRequest, key: str):
    if len(key) > 200:
        raise Http404
    try:
        return board_data(leaderboard.board(key))
    except leaderboard.BoardNotFound:
        raise Http404 from None
