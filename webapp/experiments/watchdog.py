"""Recycling a worker process stuck in a run that was declared lost.

The heartbeat means progress, so a run whose process hangs (a stopped task worker, a kernel
that never returns) goes stale and the supervisor declares it lost and resumes it elsewhere.
The hung process would still hold its worker's slot until Celery's hard time limit, days later.
A worker's main process therefore checks, every time it refreshes its own heartbeat, for
attempts its pool children were training that ended lost more than RUN_RECYCLE_GRACE_SECONDS
ago while the child never returned from them (`RunAttempt.process_done_at` empty). A child that
is merely slow notices the lost claim itself and returns within seconds; one still there after
the grace is killed with everything it started, and Celery starts a fresh child in its place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db.models import Value
from django.db.models.functions import Concat
from django.utils import timezone

from .lifecycle import OUTCOME_LOST
from .models import RunAttempt

logger = logging.getLogger(__name__)

# How long kill_tree waits for the killed processes to exit. SIGKILL is delivered at once, but a
# process holding gigabytes of mappings (a CUDA context, a dataset) takes a moment to exit, and
# until it has, its GPU memory is not free for the run that takes the slot next.
EXIT_WAIT_SECONDS = 10.0


def parent_of(pid: int) -> int | None:
    """The parent pid of a live process (Linux /proc), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1])


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children first found, then theirs)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            ppid = parent_of(int(entry.name))
            if ppid is not None:
                children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        for child in children.get(current, []):
            found.append(child)
            frontier.append(child)
    return found


def is_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie waiting for its parent to collect it (a zombie
    holds no memory and runs nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def kill_tree(pid: int, wait: float = EXIT_WAIT_SECONDS) -> bool:
    """SIGKILL a process and every process below it, then wait up to `wait` seconds for all of
    them to exit; returns whether they did. The tree is stopped first, so that no process forks
    or is reparented while it is being collected."""
    tree = [pid, *descendants(pid)]
    for member in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGSTOP)
    tree = list(dict.fromkeys([*tree, *descendants(pid)]))
    for member in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)
    deadline = time.monotonic() + wait
    while not all(is_gone(member) for member in tree):
        if time.monotonic() >= deadline:
            logger.warning(
                "processes %s were sent SIGKILL %.0f s ago and have not exited yet",
                [member for member in tree if not is_gone(member)],
                wait,
            )
            return False
        time.sleep(0.02)
    return True


def recycle_stuck_processes(hostname: str, now=None) -> list[int]:
    """Kill this worker's pool children still stuck in attempts that ended lost; returns their
    pids. Runs in the worker's main process (the children's parent)."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.RUN_RECYCLE_GRACE_SECONDS)
    stuck = RunAttempt.objects.filter(
        worker=hostname,
        outcome=OUTCOME_LOST,
        ended_at__lt=cutoff,
        process_done_at__isnull=True,
    ).exclude(pid=None)
    recycled = []
    me = os.getpid()
    for attempt in stuck:
        same = RunAttempt.objects.filter(pk=attempt.pk, process_done_at__isnull=True)
        # A pid that is not our child is not this worker's process any more (the worker
        # restarted): there is nothing to kill, only a record to close.
        if parent_of(attempt.pid) == me:
            logger.warning(
                "run %s: worker process %s still on attempt %s, lost at %s: killing it",
                attempt.run_id,
                attempt.pid,
                attempt.number,
                attempt.ended_at,
            )
            kill_tree(attempt.pid)
            recycled.append(attempt.pid)
            same.update(
                process_done_at=now,
                reason=Concat("reason", Value("; its stuck worker process was recycled")),
            )
        else:
            same.update(process_done_at=now)
    return recycled
