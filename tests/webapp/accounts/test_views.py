"""Sign-up, login and logout, and API tokens on the profile page."""

from __future__ import annotations

import re

from django.contrib.auth import get_user_model
from django.urls import reverse

from webapp.accounts.models import ApiToken, hash_token

TOKEN = re.compile(r"mt_[A-Za-z0-9_\-]{20,}")


def with_password(user, password: str = "pw"):
    user.set_password(password)
    user.save()
    return user


def test_signup_creates_the_user_and_logs_them_in(client, db):
    response = client.post(
        reverse("signup"),
        {
            "username": "ada",
            "password1": "a-long-passphrase-42",
            "password2": "a-long-passphrase-42",
        },
    )

    assert response.status_code == 302
    user = get_user_model().objects.get(username="ada")
    assert client.session["_auth_user_id"] == str(user.pk)


def test_signup_rejects_mismatched_passwords(client, db):
    response = client.post(
        reverse("signup"),
        {"username": "ada", "password1": "a-long-passphrase-42", "password2": "other-42-pass"},
    )

    assert response.status_code == 200
    assert "password2" in response.context["form"].errors
    assert not get_user_model().objects.filter(username="ada").exists()


def test_the_login_page_logs_a_user_in_and_returns_to_next(client, owner):
    with_password(owner)

    response = client.post(
        reverse("login"), {"username": "owner", "password": "pw", "next": reverse("leaderboard")}
    )

    assert response.status_code == 302
    assert response["Location"] == reverse("leaderboard")
    assert client.session["_auth_user_id"] == str(owner.pk)


def test_a_wrong_password_does_not_log_in(client, owner):
    with_password(owner)

    response = client.post(reverse("login"), {"username": "owner", "password": "nope"})

    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


def test_logout_is_a_post(client, owner):
    client.force_login(owner)

    assert client.get(reverse("logout")).status_code == 405
    response = client.post(reverse("logout"))

    assert response.status_code == 302
    assert "_auth_user_id" not in client.session


def test_the_profile_needs_a_login(client):
    response = client.get(reverse("profile"))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_a_new_token_is_shown_once_and_only_its_hash_is_stored(client, owner):
    client.force_login(owner)

    created = client.post(reverse("token-create"), {"name": "laptop"})
    raw = TOKEN.search(created.content.decode()).group(0)
    later = client.get(reverse("profile"))

    token = ApiToken.objects.get(user=owner)
    assert token.name == "laptop"
    assert token.token_hash == hash_token(raw)
    assert raw not in {token.token_hash, token.prefix, token.name}
    assert created["Cache-Control"] == "no-store"
    assert raw not in later.content.decode()
    assert token.prefix in later.content.decode()
    assert ApiToken.authenticate(raw) == owner


def test_a_token_needs_a_name(client, owner):
    client.force_login(owner)

    response = client.post(reverse("token-create"), {"name": ""})

    assert "name" in response.context["form"].errors
    assert not ApiToken.objects.exists()


def test_the_owner_revokes_a_token(client, owner):
    token, raw = ApiToken.issue(owner, "old")
    client.force_login(owner)

    response = client.post(reverse("token-revoke", args=[token.pk]))

    token.refresh_from_db()
    assert response.status_code == 302
    assert token.revoked_at is not None
    assert ApiToken.authenticate(raw) is None


def test_nobody_else_can_revoke_a_token(client, owner, stranger):
    token, raw = ApiToken.issue(owner, "mine")
    client.force_login(stranger)

    response = client.post(reverse("token-revoke", args=[token.pk]))

    token.refresh_from_db()
    assert response.status_code == 404
    assert token.revoked_at is None


def test_the_profile_lists_only_the_users_own_tokens(client, owner, stranger):
    ApiToken.issue(owner, "owner-token")
    ApiToken.issue(stranger, "stranger-token")
    client.force_login(owner)

    body = client.get(reverse("profile")).content.decode()

    assert "owner-token" in body
    assert "stranger-token" not in body
