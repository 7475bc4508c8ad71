"""A finished run's files, stored through Django's storage API (local disk, shared volume or
object storage): `runs/<run id>/initialization.safetensors` and `runs/<run id>/config.json`.

A reader follows `Run.initialization` / `Run.config_file`, so it must never find a half-written
file under those names. On a local filesystem a file is written under a temporary name in the
same folder and renamed over the final one (atomic). Elsewhere the upload goes to a temporary
name first and is then saved under the final name from that complete copy (object stores
replace an object in one step), and the temporary copy is deleted.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from django.core.files import File
from django.core.files.storage import Storage, default_storage

from .models import Run

INITIALIZATION_FILE = "initialization.safetensors"
CONFIG_FILE = "config.json"


def artifact_name(run: Run, filename: str) -> str:
    """The storage name of one of a run's files."""
    return f"runs/{run.pk}/{filename}"


def _local_path(storage: Storage, name: str) -> str | None:
    try:
        return storage.path(name)
    except NotImplementedError:
        return None


def save_file(storage: Storage, name: str, source: Path) -> str:
    """Store `source` under `name`, replacing what was there, never exposing a partial file.
    Returns the name the storage used."""
    final = _local_path(storage, name)
    if final is not None:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = f"{final}.tmp-{uuid.uuid4().hex}"
        try:
            with open(source, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return name
    head, _, tail = name.rpartition("/")
    with open(source, "rb") as fh:
        tmp_name = storage.save(f"{head}/.{tail}.{uuid.uuid4().hex}.partial", File(fh, name=tail))
    try:
        if storage.exists(name):
            storage.delete(name)
        with storage.open(tmp_name, "rb") as complete:
            return storage.save(name, File(complete, name=tail))
    finally:
        storage.delete(tmp_name)


def store_artifacts(
    run: Run, out_dir: str | os.PathLike[str], storage: Storage | None = None
) -> None:
    """Store a trained run's initialization and config from its work folder and point the
    run's file fields at them. Raises FileNotFoundError if training did not write them."""
    storage = storage or default_storage
    out = Path(out_dir)
    sources = {"initialization": out / INITIALIZATION_FILE, "config_file": out / CONFIG_FILE}
    for path in sources.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: training did not finish writing it")
    names = {
        field: save_file(storage, artifact_name(run, path.name), path)
        for field, path in sources.items()
    }
    Run.objects.filter(pk=run.pk).update(**names)
    run.initialization.name = names["initialization"]
    run.config_file.name = names["config_file"]
