"""GET /api/leaderboard: every benchmark's ranking of configurations (seeds grouped: mean, CI
across seeds, seeds, meta-iterations, the runs behind each row), accuracies as fractions 0..1."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from ninja import Query, Router

from webapp.experiments import leaderboard, leaderboard_cache

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

    def render() -> bytes:
        # What ninja does with the returned data (validate against the schema, dump, render),
        # done once per change of the boards: thousands of rows are not re-validated per request.
        boards = leaderboard.boards(include_reference_only=include_reference_only, limit=limit)
        data = {"units": "fraction", "boards": [board_data(b) for b in boards]}
        dumped = LeaderboardOut.model_validate(data).model_dump()
        return api.renderer.render(request, dumped, response_status=200)

    from .api import api  # the API this router is mounted on (it imports this module)

    content = leaderboard_cache.kept(("api", include_reference_only, limit), render)
    return HttpResponse(content, content_type=api.get_content_type())


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
