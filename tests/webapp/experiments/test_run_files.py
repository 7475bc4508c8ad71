"""A run's files (webapp/experiments/run_files.py): per-attempt scratch folders on a host, the
names in storage that carry their attempt, and cleanup that never touches a later attempt's
files."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from webapp.experiments import run_files


@pytest.fixture(autouse=True)
def _folders(work_dirs):
    """RUNS_ROOT and MEDIA_ROOT of this test's own."""


def test_each_attempt_gets_a_fresh_folder_holding_the_checkpoint_the_row_names():
    name = default_storage.save(run_files.checkpoint_name(7, 1, 40), ContentFile(b"state at 40"))
    stale = run_files.attempt_dir(7, 2)
    stale.mkdir(parents=True)
    (stale / "leftover").write_text("x")

    folder = run_files.prepare_attempt(7, 2, name)

    assert folder == run_files.attempt_dir(7, 2)
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt"]
    assert (folder / "checkpoint.pt").read_bytes() == b"state at 40"


def test_a_run_without_a_stored_checkpoint_starts_empty_or_from_its_legacy_folder(settings):
    assert list(run_files.prepare_attempt(8, 1, "").iterdir()) == []
    legacy = run_files.legacy_run_dir(9)
    legacy.mkdir(parents=True)
    (legacy / "checkpoint.pt").write_bytes(b"from before storage")
    folder = run_files.prepare_attempt(9, 3, "")
    assert (folder / "checkpoint.pt").read_bytes() == b"from before storage"


def test_stale_checkpoints_are_this_and_earlier_attempts_but_the_kept_one():
    names = [
        run_files.checkpoint_name(5, attempt, iteration)
        for attempt, iteration in [(1, 20), (2, 40), (2, 60), (3, 80)]
    ]
    for name in names:
        default_storage.save(name, ContentFile(b"."))
    assert sorted(run_files.stale_checkpoints(5, 2, keep=names[2])) == sorted(names[:2])


def test_a_sweep_removes_the_folders_of_attempts_that_are_over_and_keeps_the_current_ones():
    current = {(1, 2), (3, 1)}
    for run_id, attempt in [(1, 1), (1, 2), (2, 1), (3, 1)]:
        folder = run_files.attempt_dir(run_id, attempt)
        folder.mkdir(parents=True)
        (folder / "checkpoint.pt").write_bytes(b".")

    removed = run_files.sweep_local(lambda run_id, attempt: (run_id, attempt) in current)

    assert sorted(removed) == sorted([run_files.attempt_dir(1, 1), run_files.attempt_dir(2, 1)])
    assert run_files.attempt_dir(1, 2).is_dir() and run_files.attempt_dir(3, 1).is_dir()
    assert not run_files.legacy_run_dir(2).exists()  # emptied, then removed


def test_deleting_a_runs_files_keeps_only_what_it_is_told_to():
    keep = default_storage.save(run_files.artifact_name(4, 2, "config.json"), ContentFile(b"{}"))
    for name in (run_files.checkpoint_name(4, 1, 10), run_files.artifact_name(4, 1, "x")):
        default_storage.save(name, ContentFile(b"."))
    other = default_storage.save(run_files.checkpoint_name(40, 1, 10), ContentFile(b"."))

    assert run_files.delete_run_files(4, keep=[keep]) == 2
    assert run_files.stored_files(4) == [keep]
    assert default_storage.exists(other)
