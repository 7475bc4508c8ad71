"""The failed-login throttle: 5 failures per username (any address) or 20 per address within 15
minutes lock further attempts for 15 minutes, with one message whether the user exists or not."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from webapp.accounts import throttling
from webapp.accounts.models import LoginAttempt

LOCKED = "Too many failed login attempts"


@pytest.fixture
def ada(make_user):
    user = make_user("ada")
    user.set_password("right-password")
    user.save()
    return user


def login(username: str, password: str, ip: str = "203.0.113.1", **headers):
    client = Client(REMOTE_ADDR=ip, **headers)
    response = client.post(reverse("login"), {"username": username, "password": password})
    return client, response


def fail(username: str, times: int, ip: str = "203.0.113.1") -> None:
    for _ in range(times):
        _, response = login(username, "wrong", ip=ip)
        assert response.status_code == 200
        assert LOCKED not in response.content.decode()


def test_four_failures_do_not_lock_the_account(ada):
    fail("ada", 4)

    client, response = login("ada", "right-password")

    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(ada.pk)


def test_it_refuses_even_the_right_password_after_five_failures_from_any_address(ada):
    for i in range(5):
        fail("ada", 1, ip=f"198.51.100.{i + 1}")

    client, response = login("ada", "right-password", ip="192.0.2.77")

    assert response.status_code == 429
    assert f"{LOCKED}. Try again in 15 minutes." in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_an_unknown_username_is_locked_with_the_same_message(ada):
    fail("ada", 5, ip="198.51.100.1")
    fail("nobody", 5, ip="198.51.100.2")

    _, known = login("ada", "x", ip="192.0.2.1")
    _, unknown = login("nobody", "x", ip="192.0.2.2")

    assert known.status_code == unknown.status_code == 429
    assert known.context["form"].non_field_errors() == unknown.context["form"].non_field_errors()


def test_other_usernames_are_not_locked_by_one_users_failures(ada, make_user):
    bob = make_user("bob")
    bob.set_password("bobs-password")
    bob.save()
    fail("ada", 5, ip="198.51.100.1")

    client, response = login("bob", "bobs-password", ip="198.51.100.2")

    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(bob.pk)


def test_usernames_count_together_whatever_their_case(ada):
    for name in ("ada", "ADA", "Ada", " ada", "aDa"):
        fail(name, 1)

    _, response = login("ada", "right-password", ip="192.0.2.9")

    assert response.status_code == 429


def test_it_locks_an_address_after_twenty_failures_for_any_usernames(ada):
    for i in range(20):
        fail(f"guess{i}", 1, ip="203.0.113.50")

    _, from_there = login("ada", "right-password", ip="203.0.113.50")
    elsewhere, from_elsewhere = login("ada", "right-password", ip="203.0.113.51")

    assert from_there.status_code == 429
    assert LOCKED in from_there.content.decode()
    assert from_elsewhere.status_code == 302
    assert elsewhere.session["_auth_user_id"] == str(ada.pk)


def test_a_refused_attempt_checks_no_password_and_is_not_counted(ada, monkeypatch):
    fail("ada", 5)
    calls = []
    monkeypatch.setattr("django.contrib.auth.forms.authenticate", lambda *a, **kw: calls.append(kw))

    _, response = login("ada", "right-password")

    assert response.status_code == 429
    assert calls == []
    assert LoginAttempt.objects.filter(username="ada").count() == 5


def test_the_lockout_lasts_fifteen_minutes_from_the_fifth_failure(db):
    start = timezone.now() - timedelta(hours=1)
    for minute in (0, 1, 2, 3, 10):
        throttling.record_failure("ada", "203.0.113.1", now=start + timedelta(minutes=minute))

    def remaining(minutes: float) -> timedelta:
        return throttling.lockout_remaining("ada", None, now=start + timedelta(minutes=minutes))

    assert remaining(9.9) == timedelta(0)  # four failures so far
    assert remaining(10) == timedelta(minutes=15)
    assert remaining(24) == timedelta(minutes=1)
    assert remaining(25) == timedelta(0)


def test_failures_spread_wider_than_the_window_do_not_lock(db):
    start = timezone.now() - timedelta(hours=1)
    for minute in (0, 4, 8, 12, 16):  # never five within 15 minutes
        throttling.record_failure("ada", None, now=start + timedelta(minutes=minute))

    assert throttling.lockout_remaining("ada", None, now=start + timedelta(minutes=16)) == (
        timedelta(0)
    )


def test_a_locked_out_user_logs_in_once_the_lockout_is_over(ada):
    long_ago = timezone.now() - timedelta(minutes=16)
    LoginAttempt.objects.bulk_create(
        LoginAttempt(username="ada", ip="203.0.113.1", attempted_at=long_ago) for _ in range(5)
    )

    client, response = login("ada", "right-password")

    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(ada.pk)


def test_a_successful_login_clears_the_usernames_failures_but_not_the_addresses(ada):
    fail("ada", 4, ip="203.0.113.1")
    fail("someone", 1, ip="203.0.113.1")

    login("ada", "right-password", ip="203.0.113.1")

    assert not LoginAttempt.objects.filter(username="ada").exists()
    assert LoginAttempt.objects.filter(ip="203.0.113.1").count() == 1


def test_a_form_missing_the_password_counts_nothing(ada):
    _, response = login("ada", "")

    assert response.status_code == 200
    assert "password" in response.context["form"].errors
    assert not LoginAttempt.objects.exists()


def test_recording_a_failure_forgets_failures_too_old_to_matter(db):
    ancient = timezone.now() - timedelta(minutes=31)
    LoginAttempt.objects.create(username="old", ip=None, attempted_at=ancient)

    throttling.record_failure("new", None)

    assert list(LoginAttempt.objects.values_list("username", flat=True)) == ["new"]


def test_the_limits_come_from_settings(ada, settings):
    settings.LOGIN_FAILURES_PER_USERNAME = 2

    fail("ada", 2)
    _, response = login("ada", "right-password")

    assert response.status_code == 429


class TestClientIp:
    def test_it_uses_remote_addr_and_ignores_a_forwarded_header_without_proxies(self, rf):
        request = rf.get("/", REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="10.9.9.9")

        assert throttling.client_ip(request) == "192.0.2.1"

    def test_behind_one_proxy_it_takes_the_address_the_proxy_saw(self, rf, settings):
        settings.NUM_PROXIES = 1
        request = rf.get(
            "/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.7"
        )  # the client forged 6.6.6.6; the proxy appended what it saw

        assert throttling.client_ip(request) == "198.51.100.7"

    def test_an_unparsable_address_counts_as_none(self, rf):
        request = rf.get("/", REMOTE_ADDR="not-an-ip")

        assert throttling.client_ip(request) is None


def test_the_admin_login_is_throttled_too(make_user):
    boss = make_user("boss", is_staff=True, is_superuser=True)
    boss.set_password("right-password")
    boss.save()
    client = Client(REMOTE_ADDR="203.0.113.9")
    for _ in range(5):
        client.post("/admin/login/", {"username": "boss", "password": "wrong"})

    response = client.post("/admin/login/", {"username": "boss", "password": "right-password"})

    assert response.status_code == 200
    assert LOCKED in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_failures_on_either_login_page_count_together(ada):
    client = Client(REMOTE_ADDR="203.0.113.9")
    for _ in range(3):
        client.post("/admin/login/", {"username": "ada", "password": "wrong"})
    fail("ada", 2)

    _, response = login("ada", "right-password")

    assert response.status_code == 429
