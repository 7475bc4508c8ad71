"""Where a run's files live: a worker host's scratch folder, and the storage every host shares.

- Local, on the host that trains the attempt: ``RUNS_ROOT/<run>/attempt-<n>/`` holds the
  checkpoint metatrain is writing and its metrics log. Each attempt has its own folder, so an
  attempt that lost its run (a paused worker that wakes up) can never overwrite the checkpoint
  of the attempt that holds it now, even on a shared disk. The folder is removed when the
  attempt ends; `sweep_local` removes those of attempts that ended without cleaning up (a
  killed worker).
- Storage (Django's default storage: MEDIA_ROOT or an S3 bucket), under ``runs/<run>/``:
  ``checkpoints/attempt-<n>-iter-<i>.pt`` and ``attempt-<n>/initialization.safetensors`` +
  ``attempt-<n>/config.json``. Names carry the attempt (and iteration), so an upload never
  replaces a file another attempt wrote; which file counts is what the run row points to,
  and only the attempt that holds the run can change that (a fenced UPDATE).

A new attempt, on any host, downloads the checkpoint the row points to before training.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from django.conf import settings
from django.core.files.storage import Storage, default_storage

from metatrain.checkpoint import CHECKPOINT_FILE
from webapp import storage as storage_files

logger = logging.getLogger(__name__)

_ATTEMPT_DIR = re.compile(r"^attempt-(\d+)$")
_CHECKPOINT_NAME = re.compile(r"^attempt-(\d+)-iter-(\d+)\.pt$")


# ------------------------------------------------------------------------------------------
# Names
# ------------------------------------------------------------------------------------------
def run_prefix(run_id: int) -> str:
    return f"runs/{int(run_id)}"


def checkpoint_name(run_id: int, attempt: int, iteration: int) -> str:
    """The storage name of the checkpoint that `attempt` wrote at `iteration`."""
    return f"{run_prefix(run_id)}/checkpoints/attempt-{int(attempt)}-iter-{int(iteration)}.pt"


def artifact_name(run_id: int, attempt: int, filename: str) -> str:
    """The storage name of a finished attempt's file (initialization, config.json)."""
    return f"{run_prefix(run_id)}/attempt-{int(attempt)}/{filename}"


def attempt_dir(run_id: int, attempt: int) -> Path:
    """This host's scratch folder for one attempt of a run."""
    return Path(settings.RUNS_ROOT) / str(int(run_id)) / f"attempt-{int(attempt)}"


def legacy_run_dir(run_id: int) -> Path:
    """The folder every attempt shared before checkpoints went to storage."""
    return Path(settings.RUNS_ROOT) / str(int(run_id))


# ------------------------------------------------------------------------------------------
# Upload and download
# ------------------------------------------------------------------------------------------
# Moving whole files between this host and the storage.
upload = storage_files.upload
download = storage_files.download


def delete(name: str, storage: Storage | None = None) -> None:
    """Delete a stored file; a file already gone, or a storage error, is only logged."""
    if not name:
        return
    storage = storage or default_storage
    try:
        storage.delete(name)
    except Exception:  # storage backends raise their own kinds; cleanup is best effort
        logger.warning("could not delete %s from storage", name, exc_info=True)


def prepare_attempt(run_id: int, attempt: int, checkpoint: str) -> Path:
    """A fresh scratch folder for the attempt holding the run's checkpoint, if it has one.

    `checkpoint` is the stored name the run row points to. Runs from before checkpoints were
    stored keep theirs in the shared legacy folder, which is used when present.
    """
    folder = attempt_dir(run_id, attempt)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if checkpoint:
        download(checkpoint, folder / CHECKPOINT_FILE)
    else:
        legacy = legacy_run_dir(run_id) / CHECKPOINT_FILE
        if legacy.is_file():
            shutil.copyfile(legacy, folder / CHECKPOINT_FILE)
    return folder


def stale_checkpoints(run_id: int, attempt: int, keep: str) -> list[str]:
    """Stored checkpoints of this run that attempts up to `attempt` wrote, except `keep`.

    Only the attempt that just recorded `keep` calls this: a later attempt's files (written
    after this one lost the run) are never in the list.
    """
    folder = f"{run_prefix(run_id)}/checkpoints"
    try:
        _, files = default_storage.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = []
    for filename in files:
        match = _CHECKPOINT_NAME.match(filename)
        name = f"{folder}/{filename}"
        if match and int(match.group(1)) <= attempt and name != keep:
            names.append(name)
    return names


def stored_files(run_id: int, storage: Storage | None = None) -> list[str]:
    """Every stored file under the run's prefix."""
    storage = storage or default_storage
    found: list[str] = []

    def walk(folder: str) -> None:
        try:
            dirs, files = storage.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return
        found.extend(f"{folder}/{name}" for name in files)
        for sub in dirs:
            walk(f"{folder}/{sub}")

    walk(run_prefix(run_id))
    return found


def delete_run_files(run_id: int, keep: Iterable[str] = ()) -> int:
    """Delete a run's stored files except `keep`, and its scratch folder on this host."""
    keep = set(keep)
    doomed = [name for name in stored_files(run_id) if name not in keep]
    for name in doomed:
        delete(name)
    if not keep:
        shutil.rmtree(legacy_run_dir(run_id), ignore_errors=True)
    return len(doomed)


# ------------------------------------------------------------------------------------------
# This host's scratch folders
# ------------------------------------------------------------------------------------------
def sweep_local(is_current: Callable[[int, int], bool]) -> list[Path]:
    """Remove this host's attempt folders whose attempt is over (`is_current(run, attempt)`
    says which still train), and run folders left empty. Legacy shared folders (a checkpoint
    directly in RUNS_ROOT/<run>/) are left for their run's next attempt to pick up.
    Returns the folders removed."""
    root = Path(settings.RUNS_ROOT)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for run_folder in root.iterdir():
        if not run_folder.is_dir() or not run_folder.name.isdigit():
            continue
        run_id = int(run_folder.name)
        for child in run_folder.iterdir():
            match = _ATTEMPT_DIR.match(child.name)
            if match and child.is_dir() and not is_current(run_id, int(match.group(1))):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
        with contextlib.suppress(OSError):
            run_folder.rmdir()  # only succeeds when nothing is left in it
    return removed
