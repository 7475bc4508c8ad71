"""Template context every page needs from the accounts app."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def signup(request: HttpRequest) -> dict[str, bool]:
    """`signup_allowed`: whether to show the sign-up links (ALLOW_SIGNUP)."""
    return {"signup_allowed": settings.ALLOW_SIGNUP}
