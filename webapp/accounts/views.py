"""Log in (throttled), sign up (if open), and the profile page where a user manages their API
tokens.

A token's raw value is shown exactly once, in the response to the request that created it; only
its SHA-256 hash is stored (`ApiToken.issue`), so it can never be shown again.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from .forms import ThrottledAuthenticationForm
from .models import ApiToken


class TokenForm(forms.Form):
    name = forms.CharField(
        max_length=100,
        help_text="What the token is for, e.g. 'laptop scripts'.",
    )


class LoginView(auth_views.LoginView):
    """Django's login page with the failed-login throttle; a refusal answers 429."""

    form_class = ThrottledAuthenticationForm
    redirect_authenticated_user = True

    def form_invalid(self, form: ThrottledAuthenticationForm) -> HttpResponse:
        response = super().form_invalid(form)
        if form.is_throttled:
            response.status_code = 429
        return response


def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect(settings.LOGIN_REDIRECT_URL)
    if not settings.ALLOW_SIGNUP:  # accounts are made by an administrator
        return render(request, "registration/signup.html", {"closed": True}, status=403)
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend=settings.AUTHENTICATION_BACKENDS[0])
        messages.success(request, f"Welcome, {user.username}.")
        return redirect(settings.LOGIN_REDIRECT_URL)
    return render(request, "registration/signup.html", {"form": form})


def _profile_page(request, form, new_token=None, raw_token=None) -> HttpResponse:
    tokens = ApiToken.objects.filter(user=request.user).order_by("revoked_at", "-created_at")
    context = {"form": form, "tokens": tokens, "new_token": new_token, "raw_token": raw_token}
    response = render(request, "accounts/profile.html", context)
    if raw_token:
        response["Cache-Control"] = "no-store"  # the one page that shows the secret
    return response


@login_required
def profile(request: HttpRequest) -> HttpResponse:
    return _profile_page(request, TokenForm())


@login_required
@require_POST
def token_create(request: HttpRequest) -> HttpResponse:
    """Issue a token and show its raw value in this response only (no redirect: a redirect
    would have to carry the secret through the session or the URL)."""
    form = TokenForm(request.POST)
    if not form.is_valid():
        return _profile_page(request, form)
    token, raw = ApiToken.issue(request.user, form.cleaned_data["name"])
    return _profile_page(request, TokenForm(), new_token=token, raw_token=raw)


@login_required
@require_POST
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)  # another's token: 404
    token.revoke()
    messages.success(request, f"Token {token.name!r} revoked.")
    return redirect("profile")
