"""ALLOW_SIGNUP=false: the sign-up page says sign-up is closed (403), creates nobody, and no
page links to it."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

SIGNUP_DATA = {
    "username": "ada",
    "password1": "a-long-passphrase-42",
    "password2": "a-long-passphrase-42",
}


@pytest.fixture
def closed(settings):
    settings.ALLOW_SIGNUP = False


def test_a_closed_signup_page_says_so_with_a_403(client, db, closed):
    response = client.get(reverse("signup"))

    assert response.status_code == 403
    assert "Sign-up is closed" in response.content.decode()
    assert 'name="password1"' not in response.content.decode()


def test_a_closed_signup_creates_no_account(client, db, closed):
    response = client.post(reverse("signup"), SIGNUP_DATA)

    assert response.status_code == 403
    assert not get_user_model().objects.filter(username="ada").exists()
    assert "_auth_user_id" not in client.session


@pytest.mark.parametrize("page", ["login", "signup"])
def test_no_page_links_to_a_closed_signup(client, db, closed, page):
    html = client.get(reverse(page)).content.decode()

    assert f'href="{reverse("signup")}"' not in html


@pytest.mark.parametrize("page", ["login", "signup"])
def test_an_open_signup_is_linked_from_the_nav_and_the_login_page(client, db, page):
    html = client.get(reverse(page)).content.decode()

    assert f'href="{reverse("signup")}"' in html


def test_an_open_signup_still_creates_accounts(client, db, settings):
    settings.ALLOW_SIGNUP = True

    response = client.post(reverse("signup"), SIGNUP_DATA)

    assert response.status_code == 302
    assert get_user_model().objects.filter(username="ada").exists()
