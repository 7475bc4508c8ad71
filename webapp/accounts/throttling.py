"""Login throttling: too many failed logins lock further attempts for a while.

Rule: after LOGIN_FAILURES_PER_USERNAME (5) failures for one username, from any address, or
LOGIN_FAILURES_PER_IP (20) from one address, for any usernames, within LOGIN_THROTTLE_WINDOW
(15 minutes), attempts are refused for LOGIN_LOCKOUT (15 minutes) after the failure that reached
the limit. A refused attempt checks no password and is not counted, so waiting always helps; a
successful login clears its username's failures (not its address's: one known account must not
reset an attacker's address count).

The username counts whether or not such a user exists and the refusal reads the same either way,
so the throttle reveals nothing about which accounts exist. Failures live in the database
(`LoginAttempt`), shared by every web process. Concurrent requests that all pass the check before
any failure is written may go a few over the limit; the limit is a brake, not a proof.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone

from .models import LoginAttempt


def _setting(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


def limits() -> tuple[int, int, timedelta, timedelta]:
    """(per username, per address, window, lockout), read at call time so tests can change them."""
    return (
        _setting("LOGIN_FAILURES_PER_USERNAME", 5),
        _setting("LOGIN_FAILURES_PER_IP", 20),
        timedelta(seconds=_setting("LOGIN_THROTTLE_WINDOW_SECONDS", 15 * 60)),
        timedelta(seconds=_setting("LOGIN_LOCKOUT_SECONDS", 15 * 60)),
    )


def normalize_username(username: str) -> str:
    """The key a username is counted under: 'Ada ' and 'ada' share one count."""
    return username.strip().lower()[:150]


def client_ip(request: HttpRequest | None) -> str | None:
    """The caller's address: REMOTE_ADDR, or with NUM_PROXIES reverse proxies in front, the
    address the outermost trusted proxy saw (X-Forwarded-For, counted from the right, so a
    client cannot choose it by sending its own header)."""
    if request is None:
        return None
    candidate = request.META.get("REMOTE_ADDR", "")
    proxies = _setting("NUM_PROXIES", 0)
    if proxies > 0:
        forwarded = [a.strip() for a in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        forwarded = [a for a in forwarded if a]
        if forwarded:
            candidate = forwarded[-min(proxies, len(forwarded))]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


def _locked_until(times: list[datetime], limit: int, window: timedelta, lockout: timedelta):
    """The end of the latest lockout that `times` (failures, newest first) cause, or None.

    Failure i reaches the limit when it and the `limit - 1` failures before it fit in one
    window; the lockout runs from that failure.
    """
    for i in range(len(times) - limit + 1):
        if times[i] - times[i + limit - 1] <= window:
            return times[i] + lockout
    return None


def lockout_remaining(username: str, ip: str | None, now: datetime | None = None) -> timedelta:
    """How long the caller must wait before trying `username` again (zero: go ahead)."""
    now = now or timezone.now()
    per_user, per_ip, window, lockout = limits()
    horizon = now - window - lockout
    ends = []
    for lookup, limit in (
        ({"username": normalize_username(username)}, per_user),
        ({"ip": ip} if ip else None, per_ip),
    ):
        if lookup is None:
            continue
        times = list(
            LoginAttempt.objects.filter(**lookup, attempted_at__gte=horizon, attempted_at__lte=now)
            .order_by("-attempted_at")
            .values_list("attempted_at", flat=True)[: 10 * limit]
        )
        end = _locked_until(times, limit, window, lockout)
        if end is not None and end > now:
            ends.append(end)
    return max(ends) - now if ends else timedelta(0)


def record_failure(username: str, ip: str | None, now: datetime | None = None) -> None:
    """Count one failed login, and forget failures too old to matter to any lockout."""
    now = now or timezone.now()
    _, _, window, lockout = limits()
    LoginAttempt.objects.filter(attempted_at__lt=now - window - lockout).delete()
    LoginAttempt.objects.create(username=normalize_username(username), ip=ip, attempted_at=now)


def clear_failures(username: str) -> None:
    """A successful login: its username starts afresh."""
    LoginAttempt.objects.filter(username=normalize_username(username)).delete()


def lockout_message(remaining: timedelta) -> str:
    minutes = max(1, -(-int(remaining.total_seconds()) // 60))  # rounded up
    unit = "minute" if minutes == 1 else "minutes"
    return f"Too many failed login attempts. Try again in {minutes} {unit}."
