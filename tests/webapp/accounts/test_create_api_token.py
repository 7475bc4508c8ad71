"""`manage.py create_api_token`: prints a working token once and stores only its hash."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from webapp.accounts.models import ApiToken, hash_token


def test_it_prints_a_token_that_authenticates(owner):
    out, err = io.StringIO(), io.StringIO()

    call_command("create_api_token", "owner", "laptop", stdout=out, stderr=err)

    raw = out.getvalue().strip()
    token = ApiToken.objects.get()
    assert token.user == owner and token.name == "laptop"
    assert token.token_hash == hash_token(raw) and raw not in err.getvalue()
    assert "cannot be shown again" in err.getvalue()
    client = Client(headers={"Authorization": f"Bearer {raw}"})
    assert client.get("/api/runs").status_code == 200


def test_it_refuses_an_unknown_user(db):
    with pytest.raises(CommandError, match="No user named"):
        call_command("create_api_token", "nobody", "laptop", stdout=io.StringIO())
    assert not ApiToken.objects.exists()


def test_it_refuses_an_empty_name(owner):
    with pytest.raises(CommandError):
        call_command("create_api_token", "owner", "  ", stdout=io.StringIO())
