"""The login form with the failed-login throttle (`throttling`) in front of the password check."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import NON_FIELD_ERRORS

from . import throttling


class ThrottledAuthenticationForm(AuthenticationForm):
    """Django's login form, refusing (without checking the password) while the username or the
    caller's address is locked out, and counting each failed password."""

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
