"""The NinjaAPI instance: its description, authentication, strict JSON, one error format.

The description below is what API users read (in /api/openapi.json); error handlers turn the
service layer's refusals (webapp.experiments.errors) and database outages into the documented
answers.

Interactive docs at /api/docs: ninja's bundled Swagger UI, served from our own static files
("ninja" is an installed app, so its local template is used, never its CDN one).
"""

from __future__ import annotations

import json
import math
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import ValidationError
from ninja.parser import Parser
from ninja.renderers import JSONRenderer

from webapp.experiments.errors import QuotaExceeded, ServiceError, ValidationFailed
from webapp.experiments.services import ConfigError
from webapp.outage import outage_response

from . import datasets, experiments, leaderboard, presets, runs, sweeps, tryit
from .auth import API_AUTH
from .schemas import ExperimentIn, FieldErrors
from .sweep_schemas import SweepIn


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON; send a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a double")
    return value


class StrictJSONParser(Parser):
    """Python's json accepts NaN, Infinity and 1e999 (as inf); JSON does not, nor do we."""

    def parse_body(self, request: HttpRequest) -> Any:
        return json.loads(request.body, parse_constant=_reject_constant, parse_float=_finite_float)


def _json_safe(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _json_safe(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_json_safe(v) for v in data]
    return data


class StrictJSONRenderer(JSONRenderer):
    """Never emit NaN or Infinity (invalid JSON): a non-finite float is sent as null."""

    def render(self, request: HttpRequest, data: Any, *, response_status: int) -> Any:
        try:
            return json.dumps(data, cls=self.encoder_class, allow_nan=False)
        except ValueError:
            return json.dumps(_json_safe(data), cls=self.encoder_class, allow_nan=False)


DESCRIPTION = """\
Define few-shot meta-learning experiments (Reptile, first-order MAML) and follow their runs: the
same operations as the dashboard's pages, checked by the same code.

**Authentication.** `Authorization: Bearer <token>` (create a token on your profile page, or
`manage.py create_api_token`), or the dashboard's session cookie, in which case a write also needs
the `X-CSRFToken` header. Any authenticated user may read every experiment and run; only its
owner (or staff) may cancel or delete it.

**Errors.** Every error body has a `detail`:
- 400: the body is not strict JSON (NaN and Infinity included);
- 401: no valid token or session; 403: not yours to change (or a session write without CSRF);
- 404: unknown (or a private dataset of another user);
- 409: the current state forbids it (a finished run, a running experiment), or one of your
  quotas would be passed: then `quota`, `limit`, `usage` and `requested` say which and by how much;
- 413: body too large;
- 422: invalid input: `detail` lists **every** `{"field", "message"}` at once (`field` is a
  top-level key, `seeds.0`, or `overrides.<config field>`; null for the request as a whole).
  Wrong JSON types and unknown keys are reported first; once the shape is right, every value
  error of the request comes in one answer, as the dashboard's form shows them;
- 503: the database is unavailable; retry after `Retry-After` seconds.

**Units.** Accuracies and their 95% confidence half-widths are fractions in 0..1, rounded to 6
decimal places; other metric values to 7 significant digits (float32's precision).

**Paths.** No answer contains a path on the server: configs never carry `data_dir`; a run on an
uploaded dataset names it (`user_dataset`, `user_dataset_name`).

**Lists** take `limit` (at most 200) and `offset`, and answer `count`, `limit`, `offset`,
`items`. The runs list filters as the runs page does: `status`, `dataset`, `algorithm`, `owner`
(a username, or `me`), `q` (`search` is its old name), `tag`, `sort`; the experiments list by
`q`, `tag` and `owner`. PATCH renames an experiment or a run and edits its notes and tags.

The OpenAPI schema is served at /api/openapi.json, and read in the browser at /api/docs.
"""

api = NinjaAPI(
    title="metatrain dashboard API",
    version="1",
    description=DESCRIPTION,
    auth=API_AUTH,
    docs_url="/docs",
    parser=StrictJSONParser(),
    renderer=StrictJSONRenderer(),
    urls_namespace="api",
)
api.add_router("/presets", presets.router, tags=["presets"])
api.add_router("/experiments", experiments.router, tags=["experiments"])
api.add_router("/runs", runs.router, tags=["runs"])
api.add_router("/runs", tryit.router, tags=["try it"])
api.add_router("/leaderboard", leaderboard.router, tags=["leaderboard"])
api.add_router("/sweeps", sweeps.router, tags=["sweeps"])
api.add_router("/datasets", datasets.router, tags=["datasets"])


_PARAM_SOURCES = {"body", "query", "path", "header", "cookie", "form", "file"}


def _field_name(loc: tuple | list) -> str:
    """ninja's loc, e.g. ("body", "payload", "overrides", "ways"), as "overrides.ways"."""
    parts = list(loc)
    if parts and parts[0] in _PARAM_SOURCES:
        source = parts.pop(0)
        if source == "body" and parts and parts[0] == "payload":
            parts.pop(0)
    if not parts:
        return "body"
    if parts[0] == "overrides" and len(parts) > 2:
        parts = parts[:2]
    return ".".join(str(p) for p in parts)


_MESSAGES = {
    "extra_forbidden": "Unknown field.",
    "missing": "This field is required.",
}


def _pydantic_message(error: dict) -> str:
    message = _MESSAGES.get(error.get("type", ""), error.get("msg", "Invalid value."))
    if error.get("type") == "missing" and list(error.get("loc", [])) == ["body", "payload"]:
        return "Send a JSON object as the request body."
    return message


def _errors(request: HttpRequest, errors: list[tuple[str | None, str]]) -> HttpResponse:
    detail = [{"field": field, "message": message} for field, message in errors]
    return api.create_response(request, {"detail": detail}, status=422)


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    seen: dict[str, str] = {}
    for error in exc.errors:
        seen.setdefault(_field_name(error.get("loc", ())), _pydantic_message(error))
    return _errors(request, list(seen.items()))


@api.exception_handler(FieldErrors)
def _field_errors(request: HttpRequest, exc: FieldErrors) -> HttpResponse:
    return _errors(request, exc.errors)


def _api_field(field: str | None) -> str | None:
    """A service field name as the API names it: config fields live in `overrides`; a
    sweep's varied fields are `space.<field>`."""
    if field is not None and (field == "space" or field.startswith("space.")):
        return field
    if field is not None and field not in {*ExperimentIn.model_fields, *SweepIn.model_fields}:
        return f"overrides.{field}"
    return field


@api.exception_handler(ConfigError)
def _config_error(request: HttpRequest, exc: ConfigError) -> HttpResponse:
    message = getattr(exc, "message", None) or str(exc)
    return _errors(request, [(f"overrides.{exc.field}", message)])


@api.exception_handler(ValidationFailed)
def _validation_failed(request: HttpRequest, exc: ValidationFailed) -> HttpResponse:
    return _errors(request, [(_api_field(field), message) for field, message in exc.errors])


@api.exception_handler(QuotaExceeded)
def _quota_exceeded(request: HttpRequest, exc: QuotaExceeded) -> HttpResponse:
    body = {
        "detail": str(exc),
        "quota": exc.quota,
        "limit": exc.limit,
        "usage": exc.usage,
        "requested": exc.requested,
    }
    return api.create_response(request, body, status=409)


@api.exception_handler(ServiceError)
def _service_error(request: HttpRequest, exc: ServiceError) -> HttpResponse:
    return _errors(request, [(_api_field(exc.field), str(exc))])


@api.exception_handler(OperationalError)
@api.exception_handler(InterfaceError)
def _database_unavailable(request: HttpRequest, exc: Exception) -> HttpResponse:
    return outage_response(request, exc)


@api.exception_handler(PermissionDenied)
def _forbidden(request: HttpRequest, exc: PermissionDenied) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc) or "Forbidden."}, status=403)


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return api.create_response(request, {"detail": "Not found."}, status=404)


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return api.create_response(request, {"detail": "Request body too large."}, status=413)
