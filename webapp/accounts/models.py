"""API tokens: shown once at creation, stored only as a SHA-256 hash, revocable."""

from __future__ import annotations

import functools
import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, models
from django.utils import timezone

TOKEN_PREFIX = "mt_"
# How stale `last_used_at` may be: "used in the last minute" is all anyone reads from it.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


@functools.cache
def _token_user_sql() -> str:
    """An active token's user (every column), the token's id, and whether its last_used_at is
    due for a write; parameters: the oldest last_used_at that is not, the token's hash."""
    quote = connection.ops.quote_name
    users = get_user_model()._meta
    tokens = ApiToken._meta
    return (
        f"SELECT u.*, t.{quote(tokens.pk.column)} AS token_id, "
        "(t.last_used_at IS NULL OR t.last_used_at <= %s) AS token_last_used_due "
        f"FROM {quote(tokens.db_table)} t "
        f"JOIN {quote(users.db_table)} u ON u.{quote(users.pk.column)} = t.user_id "
        "WHERE t.token_hash = %s AND t.revoked_at IS NULL"
    )


class ApiTokenQuerySet(models.QuerySet):
    def active(self) -> ApiTokenQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiToken(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12, help_text="first characters, to recognise a token")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def issue(cls, user, name: str) -> tuple[ApiToken, str]:
        """Create a token; the raw value is returned once and never stored."""
        raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(
            user=user, name=name, token_hash=hash_token(raw), prefix=raw[:10]
        )
        return token, raw

    @classmethod
    def authenticate(cls, raw: str):
        """The user owning an active token, or None.

        Every API call by a script asks this first, so it is one query written once: the
        ORM spent twice as long building the token-and-user join as the database did
        answering it (docs/benchmarks.md)."""
        if not raw or len(raw) > 200:
            return None
        now = timezone.now()
        written_before = connection.ops.adapt_datetimefield_value(now - LAST_USED_RESOLUTION)
        found = get_user_model().objects.raw(_token_user_sql(), [written_before, hash_token(raw)])
        user = next(iter(found), None)
        if user is None or not user.is_active:
            return None
        # At most one write a minute per token: a script polling a run would otherwise turn
        # every read into a write (and a row lock) on the same row.
        if user.token_last_used_due:
            cls.objects.filter(pk=user.token_id).update(last_used_at=now)
        return user

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])


class LoginAttempt(models.Model):
    """One failed login, kept for the throttle (`webapp.accounts.throttling`).

    A table rather than Django's cache: the cache is per process unless configured otherwise,
    and gunicorn runs several workers, so a per-process counter would multiply the allowance by
    the worker count. Only failures are stored; rows older than the throttle's horizon are
    deleted as new failures arrive.
    """

    username = models.CharField(max_length=150, help_text="as typed, lower-cased")
    ip = models.GenericIPAddressField(null=True, blank=True)
    attempted_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-attempted_at"]
        indexes = [
            models.Index(fields=["username", "attempted_at"], name="loginattempt_user_time"),
            models.Index(fields=["ip", "attempted_at"], name="loginattempt_ip_time"),
            models.Index(fields=["attempted_at"], name="loginattempt_time"),
        ]

    def __str__(self) -> str:
        return f"failed login for {self.username!r} from {self.ip} at {self.attempted_at}"
