"""A database outage answers 503 with Retry-After: JSON under /api/, a plain page elsewhere;
never Django's 500 page. The database is really unreachable here: the connection is pointed
at a path that cannot be opened (SQLite) or a closed port (PostgreSQL), then restored. A change
that waited too long for a row lock (a worker frozen mid-write holds it) answers 503 too."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.db import connection, connections
from django.test import Client
from django.urls import reverse

from webapp.accounts.models import ApiToken
from webapp.experiments import lifecycle
from webapp.experiments.models import Experiment, Run

pytestmark = pytest.mark.django_db(transaction=True)  # the connection is closed and reopened


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on leaving: nothing listens there


@contextlib.contextmanager
def database_down(tmp_path) -> Iterator[None]:
    connection = connections["default"]
    saved = dict(connection.settings_dict)
    connection.close()
    if connection.vendor == "sqlite":
        connection.settings_dict["NAME"] = str(tmp_path / "no-such-folder" / "db.sqlite3")
    else:
        connection.settings_dict.update(HOST="127.0.0.1", PORT=str(_closed_port()))
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


@pytest.fixture
def token(owner) -> str:
    return ApiToken.issue(owner, "outage")[1]


def test_the_api_answers_a_json_503_with_retry_after(token, tmp_path):
    client = Client(headers={"Authorization": f"Bearer {token}"})

    with database_down(tmp_path):
        response = client.get("/api/runs")

    assert response.status_code == 503
    assert response["Content-Type"] == "application/json"
    assert response["Retry-After"] == str(settings.OUTAGE_RETRY_AFTER_SECONDS)
    assert "database is unavailable" in response.json()["detail"]


def test_an_api_write_during_an_outage_is_a_503_and_saves_nothing(token, tmp_path):
    client = Client(headers={"Authorization": f"Bearer {token}"})
    payload = {"name": "x", "preset": "sine", "overrides": {"meta_iters": 5}}

    with database_down(tmp_path):
        response = client.post("/api/experiments", payload, content_type="application/json")

    assert response.status_code == 503 and "detail" in response.json()
    assert not Experiment.objects.exists()
    # And once the database is back, the same request goes through.
    again = client.post("/api/experiments", payload, content_type="application/json")
    assert again.status_code == 201, again.content


@pytest.mark.parametrize("url", ["/", "/experiments/new/", "/leaderboard/", "/datasets/"])
def test_a_page_answers_a_plain_503_page_and_keeps_the_session(client, owner, tmp_path, url):
    client.force_login(owner)

    with database_down(tmp_path):
        response = client.get(url)

    assert response.status_code == 503
    assert response["Retry-After"] == str(settings.OUTAGE_RETRY_AFTER_SECONDS)
    body = response.content.decode()
    assert "cannot reach its database" in body and "Traceback" not in body
    session_cookie = response.cookies.get(settings.SESSION_COOKIE_NAME)
    assert session_cookie is None or session_cookie.value  # not deleted: still logged in after
    assert client.get(reverse("run-list")).status_code == 200


def test_a_form_post_during_an_outage_is_a_503(client, owner, tmp_path):
    client.force_login(owner)
    data = {"name": "x", "preset": "sine", "seeds": "0", "queue": "any"}

    with database_down(tmp_path):
        response = client.post(reverse("experiment-new"), data)

    assert response.status_code == 503
    assert not Experiment.objects.exists()


# -- a row locked by a writer frozen mid-transaction --------------------------------------------
on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="row locks: SQLite locks the whole file instead"
)


@contextlib.contextmanager
def lock_timeout(ms: int) -> Iterator[None]:
    """This session's lock_timeout (DB_LOCK_TIMEOUT_SECONDS is read when it connects)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SET lock_timeout = {ms}")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")


@pytest.fixture
def running_run(owner, make_experiment):
    queued = make_experiment(owner).runs.get()
    return lifecycle.claim_run(queued.pk, worker="w1", device="cpu")


@on_postgresql
def test_cancelling_a_run_whose_worker_froze_mid_write_answers_busy_and_changes_nothing(
    token, running_run, frozen_holder
):
    client = Client(headers={"Authorization": f"Bearer {token}"})
    url = f"/api/runs/{running_run.pk}/cancel"

    with frozen_holder(running_run), lock_timeout(300):
        started = time.monotonic()
        response = client.post(url)
        waited = time.monotonic() - started

    assert response.status_code == 503, response.content
    assert response["Retry-After"] == str(settings.OUTAGE_RETRY_AFTER_SECONDS)
    assert "locked by another writer" in response.json()["detail"]
    assert waited < 5  # the lock timeout, not gunicorn's 60 s
    assert not Run.objects.get(pk=running_run.pk).cancel_requested
    # The writer gone, the same request goes through.
    assert client.post(url).status_code == 200
    assert Run.objects.get(pk=running_run.pk).cancel_requested


@on_postgresql
def test_the_cancel_button_on_such_a_run_shows_a_busy_page(
    client, owner, running_run, frozen_holder
):
    client.force_login(owner)

    with frozen_holder(running_run), lock_timeout(300):
        response = client.post(reverse("run-cancel", args=[running_run.pk]))

    assert response.status_code == 503
    body = response.content.decode()
    assert "locked by another writer" in body and "Nothing was changed" in body
    assert not Run.objects.get(pk=running_run.pk).cancel_requested
