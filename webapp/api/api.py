"""The NinjaAPI instance: authentication, strict JSON parsing, and one error format.

Errors: 422 `{"detail": [{"field": ..., "message": ...}]}` for invalid input (the field is a
top-level key, `seeds.3`, or `overrides.<config field>`); every other 4xx is
`{"detail": "message"}`: 400 unparsable JSON (NaN and Infinity included), 401 no valid token or
session, 403 not the owner (or a session write without CSRF), 404 unknown, 409 a state that
forbids the change, 413 too large a body.

No interactive docs: ninja's Swagger UI loads from a CDN, which this project never uses. The
OpenAPI schema is served at /api/openapi.json.
"""

from __future__ import annotations

import json
import math
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import ValidationError
from ninja.parser import Parser
from ninja.renderers import JSONRenderer

from webapp.experiments.services import ConfigError, ServiceError

from . import datasets, experiments, leaderboard, presets, runs
from .auth import API_AUTH
from .schemas import ExperimentIn, FieldErrors


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


api = NinjaAPI(
    title="metatrain dashboard API",
    version="1",
    description=__doc__,
    auth=API_AUTH,
    docs_url=None,
    parser=StrictJSONParser(),
    renderer=StrictJSONRenderer(),
    urls_namespace="api",
)
api.add_router("/presets", presets.router, tags=["presets"])
api.add_router("/experiments", experiments.router, tags=["experiments"])
api.add_router("/runs", runs.router, tags=["runs"])
api.add_router("/leaderboard", leaderboard.router, tags=["leaderboard"])
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


@api.exception_handler(ConfigError)
def _config_error(request: HttpRequest, exc: ConfigError) -> HttpResponse:
    message = getattr(exc, "message", None) or str(exc)
    return _errors(request, [(f"overrides.{exc.field}", message)])


@api.exception_handler(ServiceError)
def _service_error(request: HttpRequest, exc: ServiceError) -> HttpResponse:
    # The service names config fields bare ("seed", "data_dir"); in the API they live in
    # `overrides`.
    field = exc.field
    if field is not None and field not in ExperimentIn.model_fields:
        field = f"overrides.{field}"
    return _errors(request, [(field, str(exc))])


@api.exception_handler(PermissionDenied)
def _forbidden(request: HttpRequest, exc: PermissionDenied) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc) or "Forbidden."}, status=403)


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return api.create_response(request, {"detail": "Not found."}, status=404)


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return api.create_response(request, {"detail": "Request body too large."}, status=413)
