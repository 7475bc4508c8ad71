"""Production settings: `check --deploy` is clean with a real configuration, and the site
refuses to start with DEBUG off and a missing or weak SECRET_KEY or no ALLOWED_HOSTS.

Each case runs `python manage.py ...` in a subprocess with its own environment, because settings
are read once, at import.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Variables a developer's shell might hold that would change the outcome.
CLEARED = (
    "DEBUG",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "ALLOW_SIGNUP",
    "CSRF_TRUSTED_ORIGINS",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "DJANGO_SETTINGS_MODULE",
    "WORKER_TASK_WORKERS",
    "RUN_LOST_AFTER_SECONDS",
    "DB_IDLE_IN_TRANSACTION_SECONDS",
    "DB_LOCK_TIMEOUT_SECONDS",
    "DB_JIT_OFF",
)
GOOD_KEY = secrets.token_urlsafe(50)


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in CLEARED}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def production(**overrides: str) -> dict[str, str]:
    return {"DEBUG": "false", "SECRET_KEY": GOOD_KEY, "ALLOWED_HOSTS": "example.org", **overrides}


@pytest.mark.slow  # imports the whole project (torch included): about 3 s
def test_a_production_configuration_passes_the_deploy_check_without_warnings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", **production())

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
    assert "WARNINGS" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("", "missing"),
        ("django-insecure-development-only-key", "the development key"),
        ("django-insecure-" + "x" * 50, "Django's generated development prefix"),
        # A fixed random-looking key: pytest-xdist processes must collect the same test ids.
        ("Zq3vT8mNwX1rK5pL0yB7cH2gF9jD4sA6eU-_oIiMnVbQwErTy", "49 characters"),
        ("ab" * 40, "two distinct characters"),
    ],
)
def test_it_refuses_to_start_in_production_with_a_weak_secret_key(key, why):
    result = manage("check", "--deploy", **production(SECRET_KEY=key))

    assert result.returncode == 1, why
    assert "ImproperlyConfigured: SECRET_KEY must be set" in result.stderr, why


def test_it_refuses_to_start_in_production_without_allowed_hosts():
    env = production()
    del env["ALLOWED_HOSTS"]

    result = manage("check", "--deploy", **env)

    assert result.returncode == 1
    assert "ImproperlyConfigured: ALLOWED_HOSTS must be set when DEBUG is off" in result.stderr


def test_it_refuses_a_debug_value_that_is_not_a_boolean():
    result = manage("check", **production(DEBUG="maybe"))

    assert result.returncode == 1
    assert "DEBUG='maybe' is not a boolean" in result.stderr


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in CLEARED}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_wsgi_application_refuses_a_weak_secret_key_too():
    """The refusal comes from settings, not from a check, so gunicorn (which runs no checks)
    refuses too."""
    result = python("import webapp.wsgi", **production(SECRET_KEY="short"))

    assert result.returncode == 1
    assert "SECRET_KEY must be set" in result.stderr


@pytest.mark.parametrize(("raw", "expected"), [(None, "True"), ("false", "False"), ("0", "False")])
def test_allow_signup_is_read_from_the_environment(raw, expected):
    env = {} if raw is None else {"ALLOW_SIGNUP": raw}

    result = python("import webapp.settings as s; print(s.ALLOW_SIGNUP)", **env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


@pytest.mark.parametrize(("raw", "expected"), [(None, "'auto'"), ("AUTO", "'auto'"), ("3", "3")])
def test_worker_task_workers_is_read_from_the_environment(raw, expected):
    env = {} if raw is None else {"WORKER_TASK_WORKERS": raw}

    result = python("import webapp.settings as s; print(repr(s.WORKER_TASK_WORKERS))", **env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


@pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5"])
def test_a_bad_worker_task_workers_value_is_refused_with_the_expected_form(raw):
    result = python("import webapp.settings", WORKER_TASK_WORKERS=raw)

    assert result.returncode == 1
    assert f"WORKER_TASK_WORKERS={raw.lower()!r}: expected 'auto' or a whole number >= 1" in (
        result.stderr
    )


def test_quotas_are_read_from_the_environment_and_zero_means_none():
    code = "import webapp.settings as s; print(s.QUOTA_MAX_ACTIVE_RUNS, s.QUOTA_MAX_DATASETS)"

    result = python(code, QUOTA_MAX_ACTIVE_RUNS="7", QUOTA_MAX_DATASETS="0")

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["7", "0"]


@pytest.mark.parametrize("raw", ["-1", "many"])
def test_a_bad_quota_is_refused_at_start(raw):
    result = python("import webapp.settings", QUOTA_MAX_QUEUED_RUNS=raw)

    assert result.returncode == 1
    assert f"QUOTA_MAX_QUEUED_RUNS={raw}" in result.stderr or raw in result.stderr
    assert "ImproperlyConfigured" in result.stderr


def test_postgresql_sessions_get_the_idle_and_lock_limits_and_the_idle_one_follows_lost_runs():
    code = "import webapp.settings as s; print(s.DATABASES['default']['OPTIONS']['options'])"

    default = python(code, DATABASE_URL="postgres://u@h/db", RUN_LOST_AFTER_SECONDS="120")
    chosen = python(
        code,
        DATABASE_URL="postgres://u@h/db",
        DB_IDLE_IN_TRANSACTION_SECONDS="0",
        DB_LOCK_TIMEOUT_SECONDS="3",
        DB_JIT_OFF="false",
    )

    assert default.returncode == chosen.returncode == 0, default.stderr + chosen.stderr
    assert default.stdout.split() == [
        "-c",
        "idle_in_transaction_session_timeout=120000",
        "-c",
        "lock_timeout=10000",
        "-c",
        "jit=off",
    ]
    assert chosen.stdout.split() == [
        "-c",
        "idle_in_transaction_session_timeout=0",
        "-c",
        "lock_timeout=3000",
    ]


@pytest.mark.parametrize("name", ["DB_IDLE_IN_TRANSACTION_SECONDS", "DB_LOCK_TIMEOUT_SECONDS"])
@pytest.mark.parametrize("raw", ["-1", "soon"])
def test_a_bad_database_time_limit_is_refused_at_start(name, raw):
    result = python("import webapp.settings", **{name: raw})

    assert result.returncode == 1
    assert f"{name}=" in result.stderr and raw in result.stderr
    assert "ImproperlyConfigured" in result.stderr


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, "True True True"), ("true", "True True True"), ("false", "False False False")],
)
def test_cookies_are_https_only_exactly_when_the_site_is_served_over_https(raw, expected):
    """SECURE_SSL_REDIRECT says the site is served over https; a browser never sends a Secure
    cookie back over http, so on a plain-HTTP install (false) forced-secure session and CSRF
    cookies would make logging in impossible."""
    env = production() if raw is None else production(SECURE_SSL_REDIRECT=raw)

    result = python(
        "import webapp.settings as s; "
        "print(s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE)",
        **env,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


LOGIN_PAGE_OVER_HTTP = """
import django
django.setup()
from django.conf import settings
from django.test import Client, override_settings
# No collectstatic here: static URLs without the production manifest.
plain = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}
with override_settings(STORAGES={**settings.STORAGES, "staticfiles": plain}):
    response = Client().get("/accounts/login/")
cookie = response.cookies.get("csrftoken")
print(response.status_code, response.get("Location", "-"), bool(cookie and cookie["secure"]))
"""


@pytest.mark.slow  # imports the whole project (torch included)
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("false", "200 - False"),  # plain HTTP: the page, and a cookie the browser sends back
        ("true", "301 https://testserver/accounts/login/ False"),  # behind TLS: to https first
    ],
)
def test_a_plain_http_install_serves_the_login_form_with_a_cookie_it_can_send_back(raw, expected):
    env = production(SECURE_SSL_REDIRECT=raw, ALLOWED_HOSTS="testserver")
    env["DJANGO_SETTINGS_MODULE"] = "webapp.settings"

    result = python(LOGIN_PAGE_OVER_HTTP, **env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == expected
