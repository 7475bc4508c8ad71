"""Copying whole files to and from Django's default storage (local MEDIA_ROOT or an S3 bucket),
used by everything that moves a file between hosts: checkpoints, initializations, datasets."""

from __future__ import annotations

import os
from pathlib import Path

from django.core.files import File
from django.core.files.storage import Storage, default_storage

from metatrain.checkpoint import atomic_write

_CHUNK = 1024 * 1024


def upload(source: Path, name: str, storage: Storage | None = None) -> str:
    """Store the file `source` under `name`, replacing what is there (names are chosen by the
    application, so that can only be an earlier try of the same writer); returns the name the
    storage used."""
    storage = storage or default_storage
    if storage.exists(name):
        storage.delete(name)
    with open(source, "rb") as fh:
        return storage.save(name, File(fh, name=os.path.basename(name)))


def download(name: str, dest: Path, storage: Storage | None = None) -> Path:
    """Copy a stored file to `dest` atomically: a reader never finds half of it there.
    FileNotFoundError when the storage has no such file."""
    storage = storage or default_storage

    def copy(out) -> None:
        with storage.open(name, "rb") as src:
            while chunk := src.read(_CHUNK):
                out.write(chunk)

    atomic_write(dest, copy)
    return dest
