"""The leaderboard, kept per process between the moments it can change.

Building the boards takes a few grouped queries over every finished run and a template of every
configuration: tens to hundreds of milliseconds at thousands of runs, on each of a team's page
loads. It changes only when a run succeeds (or is re-evaluated, or deleted). So each process
keeps the boards it built, keyed by a fingerprint of the succeeded runs that one aggregate reads
(how many, the highest id, the latest finish, the sum of test accuracies), and for at most
`LEADERBOARD_CACHE_SECONDS`: what the fingerprint cannot see (an experiment renamed) shows
within that time.
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
_kept: dict[tuple, tuple[tuple, float, object]] = {}


def fingerprint() -> tuple:
    """What any change to the ranked runs changes: one aggregate over the succeeded runs."""
    row = Run.objects.filter(status=Run.Status.SUCCEEDED).aggregate(
        n=Count("id"), top=Max("id"), last=Max("finished_at"), total=Sum("test_accuracy")
    )
    return (row["n"], row["top"], row["last"], row["total"])


def kept(key: tuple, build: Callable[[], T]) -> T:
    """`build()`'s result for `key`, built again when the runs' fingerprint has changed or the
    kept one is older than LEADERBOARD_CACHE_SECONDS (0 keeps nothing)."""
    seconds = settings.LEADERBOARD_CACHE_SECONDS
    if seconds <= 0:
        return build()
    now = time.monotonic()
    current = fingerprint()
    with _lock:
        entry = _kept.get(key)
    if entry is not None and entry[0] == current and now - entry[1] < seconds:
        return entry[2]  # type: ignore[return-value]
    value = build()
    with _lock:
        _kept[key] = (current, now, value)
    return value


def forget() -> None:
    """Drop everything kept (tests; a deployment never needs it)."""
    with _lock:
        _kept.clear()
