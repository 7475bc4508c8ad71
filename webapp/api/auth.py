"""Who is calling the API: an API token (`Authorization: Bearer <token>`) or a browser session.

Tokens are for scripts: no CSRF, because a browser never sends them on its own. A session is
accepted too, so the dashboard's own pages can read from the API; since a browser sends the
session cookie with any cross-site request, a session write must also pass Django's CSRF check.
A caller that is neither gets 401. Every endpoint reads the user from `request.auth`.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from ninja.errors import HttpError
from ninja.security import APIKeyCookie, HttpBearer
from ninja.utils import check_csrf

from webapp.accounts.models import ApiToken


class TokenAuth(HttpBearer):
    """`Authorization: Bearer mt_...`: the owner of an active (not revoked) token."""

    def authenticate(self, request: HttpRequest, token: str) -> Any | None:
        return ApiToken.authenticate(token.strip())


class SessionAuth(APIKeyCookie):
    """The logged-in browser user; writes must carry the CSRF token (X-CSRFToken header).

    Unlike ninja's own SessionAuth, CSRF is checked only once a session user is found, so a
    caller with neither a token nor a session gets 401 (not 403) on a write.
    """

    param_name = settings.SESSION_COOKIE_NAME

    def __call__(self, request: HttpRequest) -> Any | None:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return None
        if check_csrf(request) is not None:  # safe methods always pass
            raise HttpError(
                403, "CSRF check failed: send the X-CSRFToken header, or use an API token."
            )
        return user

    def authenticate(self, request: HttpRequest, key: str | None) -> Any | None:
        return None  # never called: __call__ decides


API_AUTH = [TokenAuth(), SessionAuth()]


def user_of(request: HttpRequest):
    """The authenticated user of an API request (set by one of API_AUTH)."""
    return request.auth
