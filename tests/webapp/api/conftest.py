"""API fixtures: clients that call as a given user with an API token."""

from __future__ import annotations

import pytest
from django.test import Client

from webapp.accounts.models import ApiToken


@pytest.fixture
def token_client(db):
    """`token_client(user)` -> a test Client sending `Authorization: Bearer <new token>`."""

    def make(user) -> Client:
        _, raw = ApiToken.issue(user, "tests")
        return Client(headers={"Authorization": f"Bearer {raw}"})

    return make


@pytest.fixture
def api(token_client, owner) -> Client:
    return token_client(owner)


@pytest.fixture
def stranger_api(token_client, stranger) -> Client:
    return token_client(stranger)


@pytest.fixture
def staff_api(token_client, staff) -> Client:
    return token_client(staff)


@pytest.fixture
def post_json():
    """`post_json(client, url, data)` or `post_json(client, url, raw="...")`: a JSON POST."""

    def post(client: Client, url: str, data=None, raw: str | None = None):
        body = raw if raw is not None else data
        return client.post(url, body, content_type="application/json")

    return post
