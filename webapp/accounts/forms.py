"""Login forms with the failed-login throttle (`throttling`) in front of the password check:
the site's login page and the admin's."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import NON_FIELD_ERRORS

from . import throttling


class ThrottleMixin:
    """Refuse (without checking the password) while the username or the caller's address is
    locked out; count each failed login; clear the username's count on success."""

    cleaned_data: dict[str, Any]
    request: Any

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if username is None or not password:
            return super().clean()  # a field is missing: no password was checked
        ip = throttling.client_ip(self.request)
        remaining = throttling.lockout_remaining(username, ip)
        if remaining:
            raise forms.ValidationError(throttling.lockout_message(remaining), code="throttled")
        try:
            cleaned = super().clean()
        except forms.ValidationError:
            throttling.record_failure(username, ip)
            raise
        throttling.clear_failures(username)
        return cleaned

    @property
    def is_throttled(self) -> bool:
        return self.has_error(NON_FIELD_ERRORS, "throttled")


class ThrottledAuthenticationForm(ThrottleMixin, AuthenticationForm):
    """The site's login form (`views.LoginView`)."""


class ThrottledAdminAuthenticationForm(ThrottleMixin, AdminAuthenticationForm):
    """The admin's login form (set on the admin site in `admin.py`): the same throttle, or
    /admin/login/ would be a way around it."""
