"""NUL characters in a page's URL or query string are refused with a 400 before any view runs
(PostgreSQL raises on them: `?q=%00` on the runs page was a 500); the API refuses them itself."""

from __future__ import annotations

import pytest
from django.urls import reverse


@pytest.fixture
def logged_in(client, owner):
    client.force_login(owner)
    return client


@pytest.mark.parametrize(
    "url",
    [
        "/?q=%00",
        "/?owner=a%00b",
        "/?dataset=%00",
        "/compare/?q=%00",
        "/?%00=1",
    ],
)
def test_a_nul_in_a_page_query_is_a_400(logged_in, url):
    response = logged_in.get(url)

    assert response.status_code == 400
    assert "NUL characters are not allowed" in response.content.decode()


def test_the_api_answers_nul_itself_with_its_documented_422(logged_in):
    response = logged_in.get("/api/runs?search=%00")

    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "search"


def test_a_nul_in_the_path_is_a_400(logged_in, owner, make_run):
    run = make_run(owner)

    response = logged_in.get(f"/runs/{run.pk}/download/metrics.csv%00")

    assert response.status_code == 400


def test_a_nul_free_query_passes(logged_in, make_run, owner):
    make_run(owner, name="findme")

    response = logged_in.get(reverse("run-list"), {"q": "findme"})

    assert response.status_code == 200
    assert "findme" in response.content.decode()


def test_anonymous_requests_are_checked_too(client):
    assert client.get("/accounts/login/?next=%00").status_code == 400
