"""Fixtures for the metatrain tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The test machine's two cores are shared: one torch thread avoids oversubscription
    stalls (a 0.2 s test took 6 s with two threads under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_task_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's default is a task worker per core; two extra interpreters per command would
    double these tests' time. tests/metatrain/test_parallel.py asks for workers explicitly."""
    monkeypatch.setenv("METATRAIN_WORKERS", "1")
