"""Fixtures for the dataset tests: the hostile-archive generator as an importable module, and
folders for uploads (MEDIA_ROOT) and extracted datasets (DATASET_CACHE_ROOT) private to each test.

The suite runs with `--import-mode=importlib`, where test folders are not packages; the
generator is registered under the name `hostile_archives` so test modules can import it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

if "hostile_archives" not in sys.modules:
    _spec = importlib.util.spec_from_file_location(
        "hostile_archives", Path(__file__).with_name("hostile_archives.py")
    )
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["hostile_archives"] = _module
    _spec.loader.exec_module(_module)


@pytest.fixture
def dataset_dirs(settings, tmp_path) -> tuple[Path, Path]:
    """(MEDIA_ROOT, DATASET_CACHE_ROOT), both empty folders of this test (and DATASETS_ROOT,
    where datasets validated before archives were stored keep their folders)."""
    media = tmp_path / "media"
    cache = tmp_path / "dataset-cache"
    media.mkdir()
    cache.mkdir()
    settings.MEDIA_ROOT = media
    settings.DATASET_CACHE_ROOT = cache
    settings.DATASETS_ROOT = tmp_path / "datasets"
    return media, cache


@pytest.fixture
def sent(monkeypatch) -> list[tuple[str, list, str]]:
    """Messages the Celery app would publish: (task name, args, queue). Nothing reaches a broker."""
    from webapp.celery import app

    messages: list[tuple[str, list, str]] = []

    def send_task(name, args=None, kwargs=None, queue=None, **options):
        messages.append((name, list(args or []), queue))

    monkeypatch.setattr(app, "send_task", send_task)
    return messages
