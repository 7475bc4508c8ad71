"""The leaderboard, kept per process between the moments it can change.

Building the boards takes a few grouped queries over every finished run and a template of every
configuration: tens to hundreds of milliseconds at thousands of runs, on each of a team's page
loads. It changes only when a run succeeds (or is re-evaluated, or deleted). So each process
keeps the boards it built, keyed by a fingerprint of the succeeded runs that one aggregate reads
(how many, the highest id, the latest finish, the sum of test accuracies), and for at most
`LEADERBOARD_CACHE_SECONDS`: what the fingerprint cannot see (an experiment renamed) shows
within that time. The fingerprint reads every succeeded run (15 ms at 10,000), so a process
checks it at most once per `LEADERBOARD_RECHECK_MS` (a second by default): a request in
between is answered from what is kept without a query, and a new result shows within that.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.db.models import Count, Max, Sum

from .models import Run

T = TypeVar("T")

_lock = threading.Lock()
# key -> (fingerprint, built at, fingerprint last checked at, value); times from time.monotonic
_kept: dict[tuple, tuple[tuple, float, float, object]] = {}


def fingerprint() -> tuple:
    """What any change to the ranked runs changes: one aggregate over the succeeded runs."""
    row = Run.objects.filter(status=Run.Status.SUCCEEDED).aggregate(
        n=Count("id"), top=Max("id"), last=Max("finished_at"), total=Sum("test_accuracy")
    )
    return (row["n"], row["top"], row["last"], row["total"])


def kept(key: tuple, build: Callable[[], T]) -> T:
    """`build()`'s result for `key`, built again when the runs' fingerprint has changed or the
    kept one is older than LEADERBOARD_CACHE_SECONDS (0 keeps nothing). The fingerprint is read
    again only once the last check is LEADERBOARD_RECHECK_MS old."""
    seconds = settings.LEADERBOARD_CACHE_SECONDS
    if seconds <= 0:
        return build()
    now = time.monotonic()
    with _lock:
        entry = _kept.get(key)
    if entry is not None and now - entry[1] < seconds:
        checked_recently = now - entry[2] < settings.LEADERBOARD_RECHECK_MS / 1000
        if checked_recently:
            return entry[3]  # type: ignore[return-value]
        current = fingerprint()
        if entry[0] == current:
            with _lock:
                _kept[key] = (current, entry[1], now, entry[3])
            return entry[3]  # type: ignore[return-value]
    else:
        current = fingerprint()
    value = build()
    with _lock:
        _kept[key] = (current, now, now, value)
    return value


def forget() -> None:
    """Drop everything kept (tests; a deployment never needs it)."""
    with _lock:
        _kept.clear()
