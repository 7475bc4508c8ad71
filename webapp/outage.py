"""The database unreachable is an outage, not a bug: 503 with Retry-After, never a 500 page.

Django raises OperationalError (cannot connect, connection lost, database locked past its
timeout, a row lock waited for longer than DB_LOCK_TIMEOUT_SECONDS) or InterfaceError (a
connection already closed) from wherever a query runs: a view, the lazy `request.user` of a
session, the API's token lookup. The API's exception handler and this middleware both answer
with `outage_response`: a JSON `{"detail": ...}` under /api/, a plain page elsewhere; a lock
waited for too long says so ("busy") rather than "unavailable". The page is rendered without
a request context, because the context processors (the user, the sign-up switch) would ask the
database again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string

logger = logging.getLogger(__name__)

OUTAGE_ERRORS = (OperationalError, InterfaceError)
API_PREFIX = "/api/"
MESSAGE = "The database is unavailable. Try again in a moment (see Retry-After)."
BUSY_MESSAGE = (
    "What this request changes is locked by another writer (a worker in the middle of a "
    "write, or one frozen there); nothing was changed. Try again in a moment (see Retry-After)."
)
# PostgreSQL's lock_not_available: a statement waited DB_LOCK_TIMEOUT_SECONDS for a row lock.
LOCK_TIMEOUT_SQLSTATE = "55P03"


def is_lock_timeout(exc: BaseException) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) == LOCK_TIMEOUT_SQLSTATE


def outage_response(request: HttpRequest, exc: BaseException) -> HttpResponse:
    """503 for `request` (JSON under /api/, a plain page elsewhere), Retry-After set."""
    busy = is_lock_timeout(exc)
    logger.error(
        "database %s for %s %s: %s",
        "busy" if busy else "unavailable",
        request.method,
        request.path,
        exc,
    )
    retry_after = settings.OUTAGE_RETRY_AFTER_SECONDS
    if request.path_info.startswith(API_PREFIX):
        detail = BUSY_MESSAGE if busy else MESSAGE
        response: HttpResponse = JsonResponse({"detail": detail}, status=503)
    else:
        page = render_to_string("503.html", {"retry_after": retry_after, "busy": busy})
        response = HttpResponse(page, status=503)
    response["Retry-After"] = str(retry_after)
    return response


class DatabaseOutageMiddleware:
    """Turns a view's OperationalError or InterfaceError into `outage_response`. Last in
    MIDDLEWARE, so it sees the view's exception before any other middleware's handler."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if isinstance(exc, OUTAGE_ERRORS):
            return outage_response(request, exc)
        return None
