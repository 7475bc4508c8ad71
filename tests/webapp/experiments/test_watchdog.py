"""Recycling a worker's pool child stuck in a lost run (webapp/experiments/watchdog.py), with
real processes: this test process plays the worker's main process, its children the pool
child and the task workers the stuck child started."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from webapp.experiments import lifecycle, watchdog
from webapp.experiments.models import RunAttempt
from webapp.experiments.watchdog import (
    descendants,
    is_gone,
    parent_of,
    recycle_stuck_processes,
)

HOST = "train-gpu0@box"
# A child that starts a grandchild (a task worker) and then hangs, as a stuck run does.
STUCK = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "time.sleep(120)\n"
)


@pytest.fixture
def stuck_child():
    proc = subprocess.Popen([sys.executable, "-c", STUCK])
    deadline = time.monotonic() + 10
    while not descendants(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    yield proc
    for pid in [proc.pid, *descendants(proc.pid)]:
        subprocess.run(["kill", "-9", str(pid)], check=False)
    proc.wait(10)


@pytest.fixture
def attempt(owner, make_experiment, settings):
    settings.RUN_RECYCLE_GRACE_SECONDS = 60
    run = make_experiment(owner).runs.get()
    claimed = lifecycle.claim_run(run.pk, worker=HOST, device="cuda", pid=None)

    def make(pid: int, *, lost_ago: float = 120, outcome: str = lifecycle.OUTCOME_LOST):
        RunAttempt.objects.filter(run=claimed).update(
            pid=pid, outcome=outcome, ended_at=timezone.now() - timedelta(seconds=lost_ago)
        )
        return RunAttempt.objects.get(run=claimed)

    return make


def test_a_child_stuck_in_a_run_lost_past_the_grace_is_killed_with_what_it_started(
    stuck_child, attempt
):
    grandchildren = descendants(stuck_child.pid)
    assert len(grandchildren) == 1 and parent_of(stuck_child.pid) is not None
    stuck = attempt(stuck_child.pid)

    assert recycle_stuck_processes(HOST) == [stuck_child.pid]

    # It returns once the whole tree has exited (the child is a zombie until we collect it), so
    # the slot's GPU memory is free before Celery gives the slot to the next run.
    assert all(is_gone(pid) for pid in [stuck_child.pid, *grandchildren])
    stuck_child.wait(10)
    stuck.refresh_from_db()
    assert stuck.process_done_at is not None
    assert stuck.reason.endswith("its stuck worker process was recycled")
    assert recycle_stuck_processes(HOST) == []  # once


def test_a_child_is_given_the_grace_to_notice_the_loss_itself(stuck_child, attempt):
    attempt(stuck_child.pid, lost_ago=5)
    assert recycle_stuck_processes(HOST) == []
    assert stuck_child.poll() is None


def test_a_child_that_returned_or_an_attempt_that_ended_otherwise_is_left_alone(
    stuck_child, attempt
):
    done = attempt(stuck_child.pid, outcome="succeeded")
    assert recycle_stuck_processes(HOST) == []
    RunAttempt.objects.filter(pk=done.pk).update(
        outcome=lifecycle.OUTCOME_LOST, process_done_at=timezone.now()
    )
    assert recycle_stuck_processes(HOST) == []
    assert stuck_child.poll() is None


def test_a_pid_that_is_not_this_workers_child_is_only_closed(attempt):
    """The worker restarted: the pid it recorded is nobody's now, or another process's."""
    record = attempt(1)  # init: alive, and certainly not our child
    assert recycle_stuck_processes(HOST) == []
    record.refresh_from_db()
    assert record.process_done_at is not None
    assert "recycled" not in record.reason


def test_a_tree_that_has_not_exited_within_the_wait_is_reported_not_waited_on(
    stuck_child, monkeypatch, caplog
):
    """A process stuck in the kernel (uninterruptible I/O, a wedged driver) can outlive SIGKILL
    for a long time; the worker's heartbeat must not wait on it."""
    monkeypatch.setattr(watchdog, "is_gone", lambda pid: False)
    started = time.monotonic()
    assert watchdog.kill_tree(stuck_child.pid, wait=0.3) is False
    assert time.monotonic() - started < 5
    assert "have not exited" in caplog.text
