"""GET /api/leaderboard: every benchmark's ranking of configurations (seeds grouped: mean, CI
across seeds, seeds, meta-iterations, the runs behind each row), accuracies as fractions 0..1."""

from __future__ import annotations

from django.http import Http404, HttpRequest
from ninja import Query, Router

from webapp.experiments import leaderboard

from .outputs import board_data
from .schemas import BoardOut, LeaderboardOut

router = Router()


@router.get("", response=LeaderboardOut, summary="All leaderboards")
def all_boards(
    request: HttpRequest,
    include_reference_only: bool = False,
    limit: int = Query(leaderboard.DEFAULT_ROWS, ge=1, le=leaderboard.MAX_ROWS),
):
    """Boards with at least one ranked configuration, each with its best `limit`
    configurations; `include_reference_only` adds the paper's benchmarks no run has reached."""
    boards = leaderboard.boards(include_reference_only=include_reference_only, limit=limit)
    return {"units": "fraction", "boards": [board_data(b) for b in boards]}


@router.get("/{key}", response=BoardOut, summary="One leaderboard by its key")
def one_board(
    request: HttpRequest,
    key: str,
    limit: int = Query(leaderboard.DEFAULT_ROWS, ge=1, le=leaderboard.MAX_ROWS),
):
    if len(key) > 200:
        raise Http404
    try:
        return board_data(leaderboard.board(key, limit=limit))
    except leaderboard.BoardNotFound:
        raise Http404 from None
