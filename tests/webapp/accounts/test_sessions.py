"""The session engine (`webapp.accounts.sessions`): one raw query reads a live session;
expired, unknown and tampered sessions are refused as Django refuses them; sessions that name
Django's ModelBackend stay logged in."""

from __future__ import annotations

import logging
from datetime import timedelta

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.models import Session
from django.core.exceptions import SuspiciousOperation
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from webapp.accounts.backends import _user_sql
from webapp.accounts.sessions import SessionStore, _session_sql


def queries_on(captured: CaptureQueriesContext, table: str) -> list[str]:
    return [q["sql"] for q in captured.captured_queries if table in q["sql"]]


def session_for(user, backend: str) -> SessionStore:
    """A saved session logged in as `user` through `backend`, as `login()` leaves it."""
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = backend
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return session


def test_a_page_reads_the_session_and_the_user_in_one_query_each(client, owner):
    client.force_login(owner)

    with CaptureQueriesContext(connection) as captured:
        response = client.get(reverse("profile"))

    assert response.status_code == 200
    assert response.context["user"] == owner
    [session_query] = queries_on(captured, "django_session")
    [user_query] = queries_on(captured, "auth_user")
    # The SQL written once, not the ORM's.
    assert session_query.startswith(_session_sql(Session).split("%s")[0])
    assert user_query.startswith(_user_sql().split("%s")[0])


def test_the_engine_is_the_one_the_site_uses(client, owner):
    client.force_login(owner)

    assert settings.SESSION_ENGINE == "webapp.accounts.sessions"
    assert isinstance(client.session, SessionStore)


def test_a_session_keeps_what_was_saved_in_it(db):
    session = SessionStore()
    session["answer"] = 42
    session.create()

    loaded = SessionStore(session.session_key)

    assert loaded["answer"] == 42
    assert loaded.session_key == session.session_key


def test_an_expired_session_is_sent_to_the_login_page(client, owner):
    client.force_login(owner)
    Session.objects.filter(pk=client.session.session_key).update(
        expire_date=timezone.now() - timedelta(seconds=1)
    )

    response = client.get(reverse("profile"))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_an_expired_session_loads_empty_and_forgets_its_key(owner):
    key = session_for(owner, settings.AUTHENTICATION_BACKENDS[0]).session_key
    Session.objects.filter(pk=key).update(expire_date=timezone.now() - timedelta(seconds=1))
    store = SessionStore(key)

    assert store.load() == {}
    assert store.session_key is None


def test_an_unknown_session_key_is_sent_to_the_login_page(client, owner):
    client.force_login(owner)
    client.cookies[settings.SESSION_COOKIE_NAME] = "x" * 32

    response = client.get(reverse("profile"))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_a_malformed_session_key_is_never_looked_up(db):
    store = SessionStore("short")

    with CaptureQueriesContext(connection) as captured:
        assert store.load() == {}

    assert store.session_key is None
    assert captured.captured_queries == []


def test_tampered_session_data_is_refused(client, owner, caplog):
    client.force_login(owner)
    row = Session.objects.get(pk=client.session.session_key)
    row.session_data = row.session_data[:-3] + "abc"
    row.save()

    with caplog.at_level(logging.WARNING, logger="django.security.SuspiciousSession"):
        response = client.get(reverse("profile"))

    assert response.status_code == 302
    assert "Session data corrupted" in caplog.text


def test_a_suspicious_lookup_is_logged_and_refused(owner, monkeypatch, caplog):
    key = session_for(owner, settings.AUTHENTICATION_BACKENDS[0]).session_key
    store = SessionStore(key)

    def suspicious(*args, **kwargs):
        raise SuspiciousOperation("bad key")

    monkeypatch.setattr(Session.objects, "raw", suspicious)
    with caplog.at_level(logging.WARNING, logger="django.security.SuspiciousOperation"):
        assert store.load() == {}

    assert store.session_key is None
    assert "bad key" in caplog.text


def test_a_session_logged_in_through_djangos_model_backend_stays_logged_in(client, owner):
    session = session_for(owner, "django.contrib.auth.backends.ModelBackend")
    client.cookies[settings.SESSION_COOKIE_NAME] = session.session_key

    with CaptureQueriesContext(connection) as captured:
        response = client.get(reverse("profile"))

    assert response.status_code == 200
    assert response.context["user"] == owner
    assert len(queries_on(captured, "auth_user")) == 1
    # Read as ours in memory only: the stored session is not rewritten by reading it.
    assert Session.objects.get(pk=session.session_key).get_decoded()[BACKEND_SESSION_KEY] == (
        "django.contrib.auth.backends.ModelBackend"
    )


def test_a_session_naming_an_unlisted_backend_is_refused(client, owner):
    session = session_for(owner, "django.contrib.auth.backends.RemoteUserBackend")
    client.cookies[settings.SESSION_COOKIE_NAME] = session.session_key

    response = client.get(reverse("profile"))

    assert response.status_code == 302


def test_a_signed_up_user_stays_logged_in_on_the_next_page(client, db):
    client.post(
        reverse("signup"),
        {
            "username": "ada",
            "password1": "a-long-passphrase-42",
            "password2": "a-long-passphrase-42",
        },
    )

    response = client.get(reverse("profile"))

    assert response.status_code == 200
    assert response.context["user"].username == "ada"


def test_logout_ends_the_session(client, owner):
    client.force_login(owner)
    key = client.session.session_key

    client.post(reverse("logout"))
    response = client.get(reverse("profile"))

    assert not Session.objects.filter(pk=key).exists()
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_async_reads_see_djangos_model_backend_as_ours_too(owner):
    key = session_for(owner, "django.contrib.auth.backends.ModelBackend").session_key

    data = async_to_sync(SessionStore(key).aload)()

    assert data[BACKEND_SESSION_KEY] == settings.AUTHENTICATION_BACKENDS[0]
