"""The authentication backend (`webapp.accounts.backends.RawModelBackend`): one raw query
loads the session's user, refused as ModelBackend refuses them; logging in and permissions
are ModelBackend's."""

from __future__ import annotations

from unittest import mock

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from webapp.accounts.backends import RawModelBackend

BACKEND = "webapp.accounts.backends.RawModelBackend"


def test_it_is_the_only_backend(db):
    assert settings.AUTHENTICATION_BACKENDS == [BACKEND]


def test_it_loads_an_active_user_with_every_field_in_one_query(owner):
    with CaptureQueriesContext(connection) as captured:
        user = RawModelBackend().get_user(owner.pk)
        fields = {f.attname: getattr(user, f.attname) for f in user._meta.concrete_fields}

    assert len(captured.captured_queries) == 1
    assert user == owner and user.get_deferred_fields() == set()
    assert fields == {f.attname: getattr(owner, f.attname) for f in owner._meta.concrete_fields}
    assert user._state.db == "default" and not user._state.adding


def test_it_refuses_an_inactive_user(owner):
    get_user_model().objects.filter(pk=owner.pk).update(is_active=False)

    assert RawModelBackend().get_user(owner.pk) is None


def test_it_returns_none_for_a_missing_user(db):
    assert RawModelBackend().get_user(999_999) is None


def test_it_returns_none_for_an_id_that_is_not_a_valid_integer(owner):
    backend = RawModelBackend()

    with CaptureQueriesContext(connection) as captured:
        for user_id in ("abc", "", None, "1.5", 2**70, -(2**70)):
            assert backend.get_user(user_id) is None

    assert captured.captured_queries == []
    assert backend.get_user(str(owner.pk)) == owner


def test_an_inactive_users_session_is_refused(client, owner):
    client.force_login(owner)
    get_user_model().objects.filter(pk=owner.pk).update(is_active=False)

    response = client.get(reverse("profile"))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_the_login_page_records_this_backend_in_the_session(client, owner):
    owner.set_password("pw")
    owner.save()

    response = client.post(reverse("login"), {"username": "owner", "password": "pw"})

    assert response.status_code == 302
    assert client.session[BACKEND_SESSION_KEY] == BACKEND


def test_a_wrong_password_is_checked_once(client, owner):
    owner.set_password("pw")
    owner.save()
    User = get_user_model()

    with mock.patch.object(User, "check_password", autospec=True, return_value=False) as check:
        response = client.post(reverse("login"), {"username": "owner", "password": "nope"})

    assert response.status_code == 200
    assert check.call_count == 1


def test_permissions_are_model_backends(owner):
    owner.user_permissions.add(Permission.objects.get(codename="add_apitoken"))
    user = RawModelBackend().get_user(owner.pk)

    assert user.has_perm("accounts.add_apitoken")
    assert not user.has_perm("accounts.delete_apitoken")
