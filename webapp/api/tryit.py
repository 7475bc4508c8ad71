"""/api/runs/{id}/try/...: try a succeeded run's initialization on a task of your own.

Any authenticated user may try any run (runs are public to read; trying changes nothing).
Answers: 404 unknown run; 409 a run that cannot be tried so (not succeeded, no initialization,
another kind of task, no Omniglot images on this server); 422 bad input, every field at once
(`support.<class>.<k>` / `queries.<i>` name a bad image); 429 too many adaptations at once
(`Retry-After`); 503 past the time limit. The work is `webapp.experiments.tryit`'s.
"""

from __future__ import annotations

from typing import Annotated

from django.http import HttpRequest, HttpResponse
from ninja import Query, Router, Status
from pydantic import Field

from webapp.experiments import tryit
from webapp.experiments.access import get_run_for_user
from webapp.experiments.errors import ValidationFailed

from .auth import user_of
from .runs import RunId
from .schemas import INT32_MAX, FieldErrors, MessageOut, StrictSchema

router = Router()

# No maxLength in the schema: the image's size limit is checked with its other faults (422,
# naming the image), and a body over the server's limit is refused whole (413).
ImageText = Annotated[
    str,
    Field(
        description=f"a PNG or JPEG, base64 (a data:image/...;base64, URL or the bare text), "
        f"at most {tryit.MAX_IMAGE_BYTES // 1024} KB and {tryit.MAX_IMAGE_SIDE} pixels a side"
    ),
]


class SineTryIn(StrictSchema):
    x: list[float] = Field(max_length=tryit.MAX_SINE_POINTS, description="in [-5, 5]")
    y: list[float] = Field(max_length=tryit.MAX_SINE_POINTS, description="one per x")


class SineTaskOut(StrictSchema):
    seed: int
    amplitude: float
    phase: float
    x: list[float]
    y: list[float]


class SineTryOut(StrictSchema):
    grid: list[float]
    steps: list[int]
    initialization: list[list[float]] = Field(description="a curve on `grid` per step count")
    random: list[list[float]] = Field(description="the same from the run's random start")
    seconds: float


class OmniglotTryIn(StrictSchema):
    support: list[Annotated[list[ImageText], Field(max_length=tryit.MAX_SHOTS)]] = Field(
        max_length=tryit.MAX_WAYS, description="one list of K images per class"
    )
    queries: list[ImageText] = Field(max_length=tryit.MAX_QUERIES)


class Prediction(StrictSchema):
    predicted: list[int] = Field(description="the class of each query")
    probabilities: list[list[float]] = Field(description="per query, one per class")


class OmniglotTryOut(StrictSchema):
    ways: int
    shots: int
    transductive: bool
    inner_iterations: int
    inner_batch: int
    initialization: Prediction
    random: Prediction
    seconds: float


class OmniglotTaskOut(StrictSchema):
    seed: int
    ways: int
    shots: int
    support: list[list[str]]
    queries: list[str]
    query_labels: list[int]


Seed = Annotated[int | None, Query(ge=0, le=INT32_MAX, description="default: a random one")]
REFUSALS = {409: MessageOut, 429: MessageOut, 503: MessageOut}


def _answer(request: HttpRequest, work) -> object:
    try:
        return work()
    except ValidationFailed as exc:  # fields of this request's body, not of a config
        raise FieldErrors(exc.errors) from None
    except tryit.NotTryable as exc:
        return Status(409, {"detail": str(exc)})
    except tryit.Busy as exc:
        return _with_retry(request, 429, str(exc))
    except tryit.TooSlow as exc:
        return _with_retry(request, 503, str(exc))


def _with_retry(request: HttpRequest, status: int, detail: str) -> HttpResponse:
    from .api import api  # the API instance imports this module

    response = api.create_response(request, {"detail": detail}, status=status)
    response["Retry-After"] = "1"
    return response


@router.get(
    "/{run_id}/try/sine/task",
    response={200: SineTaskOut, 409: MessageOut},
    summary="A random sine task with the run's K points",
)
def sine_task(request: HttpRequest, run_id: RunId, seed: Seed = None):
    run = get_run_for_user(user_of(request), run_id)
    return _answer(request, lambda: tryit.random_sine_task(run, seed))


@router.post(
    "/{run_id}/try/sine",
    response={200: SineTryOut, **REFUSALS},
    summary="Fit sine points from the initialization and from a random start",
)
def try_sine(request: HttpRequest, run_id: RunId, payload: SineTryIn):
    """The fits on a grid over [-5, 5] after 0, 1 and 32 steps (the paper's Figure 1) with
    the run's evaluation batch and inner learning rate, from the trained initialization and
    from the network the run started from."""
    user = user_of(request)
    run = get_run_for_user(user, run_id)
    return _answer(request, lambda: tryit.try_sine(run, user.pk, payload.x, payload.y))


@router.get(
    "/{run_id}/try/omniglot/task",
    response={200: OmniglotTaskOut, 409: MessageOut},
    summary="A random task from the run's test characters (built-in Omniglot)",
)
def omniglot_task(
    request: HttpRequest,
    run_id: RunId,
    ways: Annotated[int, Query(ge=1, le=INT32_MAX)] = 5,
    shots: Annotated[int, Query(ge=1, le=INT32_MAX)] = 1,
    seed: Seed = None,
):
    run = get_run_for_user(user_of(request), run_id)
    return _answer(request, lambda: tryit.random_omniglot_task(run, ways, shots, seed))


@router.post(
    "/{run_id}/try/omniglot",
    response={200: OmniglotTryOut, **REFUSALS},
    summary="Classify query images after adapting to your support images",
)
def try_omniglot(request: HttpRequest, run_id: RunId, payload: OmniglotTryIn):
    """Adapts the initialization, and the run's random start, to the support images with the
    run's evaluation settings (inner iterations, batch, learning rate; a fresh optimizer) and
    classifies the queries as the run's evaluation does (transductive or not). Images are
    reduced to the run's image size: grayscale, binary, white background."""
    user = user_of(request)
    run = get_run_for_user(user, run_id)
    return _answer(
        request, lambda: tryit.try_omniglot(run, user.pk, payload.support, payload.queries)
    )
