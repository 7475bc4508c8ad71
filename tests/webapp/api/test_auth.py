"""Who may call the API: token or session (session writes need CSRF); owners change their own."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from webapp.accounts.models import ApiToken
from webapp.experiments.models import Experiment, Run

NEW = {"name": "x", "overrides": {"meta_iters": 5}, "seeds": [1]}


@pytest.fixture
def queued_run(owner, make_experiment):
    return make_experiment(owner).runs.get()


def write_requests(run):
    return [
        ("post", "/api/experiments", NEW),
        ("post", f"/api/runs/{run.pk}/cancel", None),
        ("delete", f"/api/experiments/{run.experiment_id}", None),
    ]


def call(client, method, url, data=None):
    if method == "post":
        return client.post(url, data, content_type="application/json")
    return getattr(client, method)(url)


def test_writes_without_a_token_are_401(client, queued_run):
    for method, url, data in write_requests(queued_run):
        response = call(client, method, url, data)
        assert response.status_code == 401, url
    queued_run.refresh_from_db()
    assert queued_run.status == Run.Status.QUEUED
    assert Experiment.objects.count() == 1


@pytest.mark.parametrize(
    "url", ["/api/runs", "/api/experiments", "/api/leaderboard", "/api/presets"]
)
def test_reads_need_a_token_or_a_session(client, url):
    assert client.get(url).status_code == 401


@pytest.mark.parametrize(
    "header",
    ["Bearer mt_not-a-real-token", "Bearer ", "Token abc", "Basic b3duZXI6cHc=", "x" * 500],
)
def test_a_bad_authorization_header_is_401(db, header):
    client = Client(headers={"Authorization": header})

    assert client.get("/api/runs").status_code == 401
    assert client.post("/api/experiments", NEW, content_type="application/json").status_code == 401


def test_a_revoked_token_is_401(owner):
    token, raw = ApiToken.issue(owner, "laptop")
    client = Client(headers={"Authorization": f"Bearer {raw}"})
    assert client.get("/api/runs").status_code == 200

    token.revoke()

    assert client.get("/api/runs").status_code == 401
    assert client.post("/api/experiments", NEW, content_type="application/json").status_code == 401


def test_an_inactive_users_token_is_401(owner):
    _, raw = ApiToken.issue(owner, "laptop")
    owner.is_active = False
    owner.save()

    assert Client(headers={"Authorization": f"Bearer {raw}"}).get("/api/runs").status_code == 401


def test_a_token_writes_without_csrf_and_records_its_use(owner):
    token, raw = ApiToken.issue(owner, "script")
    client = Client(enforce_csrf_checks=True, headers={"Authorization": f"Bearer {raw}"})

    response = client.post("/api/experiments", NEW, content_type="application/json")

    assert response.status_code == 201
    assert Experiment.objects.get().owner == owner
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_a_token_records_its_use_at_most_once_a_minute(owner):
    token, raw = ApiToken.issue(owner, "script")
    client = Client(headers={"Authorization": f"Bearer {raw}"})
    client.get("/api/runs")
    token.refresh_from_db()
    first = token.last_used_at

    with CaptureQueriesContext(connection) as queries:
        assert client.get("/api/runs").status_code == 200
    token.refresh_from_db()
    assert token.last_used_at == first
    assert not [q for q in queries if q["sql"].startswith("UPDATE")]

    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first - timedelta(minutes=2))
    client.get("/api/runs")
    token.refresh_from_db()
    assert token.last_used_at > first


def test_a_token_is_checked_in_one_query_and_gives_its_user(owner, django_assert_num_queries):
    token, raw = ApiToken.issue(owner, "script")
    assert ApiToken.authenticate(raw) == owner  # its first use: the write of last_used_at

    with django_assert_num_queries(1):
        user = ApiToken.authenticate(raw)

    assert (user.pk, user.username, user.is_active) == (owner.pk, owner.username, True)
    assert user.date_joined == owner.date_joined  # a whole user, its columns converted
    assert ApiToken.authenticate(raw + "x") is None
    token.revoke()
    assert ApiToken.authenticate(raw) is None


def test_a_session_user_may_read(owner):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)

    assert client.get("/api/runs").status_code == 200


def test_a_session_write_without_the_csrf_token_is_403(owner, queued_run):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)

    create = client.post("/api/experiments", NEW, content_type="application/json")
    cancel = client.post(f"/api/runs/{queued_run.pk}/cancel")

    assert create.status_code == 403 and cancel.status_code == 403
    assert "CSRF" in create.json()["detail"]
    assert Experiment.objects.count() == 1
    queued_run.refresh_from_db()
    assert queued_run.status == Run.Status.QUEUED


def test_a_session_write_with_the_csrf_token_succeeds(owner):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    secret = "a" * 32  # the CSRF cookie a page would set; the header must match it
    client.cookies["csrftoken"] = secret
    response = client.post(
        "/api/experiments",
        NEW,
        content_type="application/json",
        headers={"X-CSRFToken": secret},
    )

    assert response.status_code == 201, response.content


def test_someone_elses_run_cannot_be_cancelled(stranger_api, queued_run):
    response = stranger_api.post(f"/api/runs/{queued_run.pk}/cancel")

    assert response.status_code == 403
    assert response.json()["detail"]
    queued_run.refresh_from_db()
    assert queued_run.status == Run.Status.QUEUED and not queued_run.cancel_requested


def test_someone_elses_experiment_cannot_be_deleted(stranger_api, queued_run):
    response = stranger_api.delete(f"/api/experiments/{queued_run.experiment_id}")

    assert response.status_code == 403
    assert Experiment.objects.filter(pk=queued_run.experiment_id).exists()


def test_someone_elses_run_can_be_read(stranger_api, queued_run):
    body = stranger_api.get(f"/api/runs/{queued_run.pk}").json()

    assert body["id"] == queued_run.pk and body["can_change"] is False


def test_unknown_objects_are_404_even_for_writes(api):
    assert api.post("/api/runs/987654/cancel").status_code == 404
    assert api.delete("/api/experiments/987654").status_code == 404
    assert api.get("/api/runs/987654").status_code == 404


def test_tokens_are_stored_only_as_hashes(owner):
    token, raw = ApiToken.issue(owner, "laptop")

    stored = ApiToken.objects.filter(pk=token.pk).values().get()

    assert raw not in [str(v) for v in stored.values()]
    assert stored["token_hash"] == hashlib.sha256(raw.encode()).hexdigest()
    assert raw.startswith(stored["prefix"]) and len(stored["prefix"]) < len(raw) // 3
