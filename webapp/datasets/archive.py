"""A validated dataset as one archive in storage, and each worker host's cache of it.

The worker that validates an upload packs the checked folder into a canonical zip (members
sorted, fixed timestamps, stored uncompressed: images are compressed already), names it by its
sha256 and stores it (`datasets/<id>/<sha256>.zip`). Any host that trains on the dataset
fetches it once into DATASET_CACHE_ROOT/<sha256>/: downloaded, checked against the hash the
database records, extracted beside the cache and renamed into place, so a folder in the cache
is always complete, and two processes fetching at once both end with the same folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
import zipfile
from pathlib import Path

from django.conf import settings

from webapp import storage as storage_files

from .models import UserDataset, dataset_folder

logger = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
# Every member of a packed archive gets this time, so the same files give the same bytes.
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


class DatasetUnavailable(RuntimeError):
    """A ready dataset that cannot be made available on this host (says which and why)."""


def pack(folder: Path, target: Path) -> str:
    """Write `folder`'s files into the zip `target` in a canonical form; returns its sha256."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            with open(path, "rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
    return file_sha256(target)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def archive_name(dataset_id: int, content_hash: str) -> str:
    return f"datasets/{int(dataset_id)}/{content_hash}.zip"


def store(dataset_id: int, packed: Path, content_hash: str) -> str:
    """Upload a packed archive; returns the name the storage used."""
    return storage_files.upload(packed, archive_name(dataset_id, content_hash))


def cache_folder(content_hash: str) -> Path:
    return Path(settings.DATASET_CACHE_ROOT) / content_hash


def adopt(folder: Path, content_hash: str) -> Path:
    """Move a complete folder (just validated on this host) into the cache under its hash."""
    target = cache_folder(content_hash)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(folder, target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(folder, ignore_errors=True)  # the same content is cached already
    return target


def local_folder(dataset: UserDataset) -> Path:
    """The folder of a ready dataset on this host, fetched into the cache if it is not there.

    Datasets validated before archives were stored have only their extracted folder under
    DATASETS_ROOT, used where it exists. Raises DatasetUnavailable otherwise.
    """
    if dataset.content_hash and dataset.archive:
        folder = cache_folder(dataset.content_hash)
        if folder.is_dir():
            return folder
        return _fetch(dataset, folder)
    legacy = dataset_folder(dataset.pk)
    if legacy.is_dir():
        return legacy
    raise DatasetUnavailable(
        f"dataset '{dataset.name}' (#{dataset.pk}) has no archive in storage and its folder is "
        "not on this host; upload it again"
    )


def _fetch(dataset: UserDataset, folder: Path) -> Path:
    root = folder.parent
    root.mkdir(parents=True, exist_ok=True)
    download = root / f".{folder.name}.{uuid.uuid4().hex[:12]}.zip"
    tmp = root / f".{folder.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        try:
            storage_files.download(dataset.archive.name, download)
        except FileNotFoundError:
            raise DatasetUnavailable(
                f"dataset '{dataset.name}' (#{dataset.pk}): its archive is missing from storage"
            ) from None
        actual = file_sha256(download)
        if actual != dataset.content_hash:
            raise DatasetUnavailable(
                f"dataset '{dataset.name}' (#{dataset.pk}): the stored archive's sha256 is "
                f"{actual[:12]}…, the database says {dataset.content_hash[:12]}…; it was changed "
                "or damaged in storage"
            )
        tmp.mkdir()
        _extract(download, tmp)
        logger.info("dataset %s fetched into %s", dataset.pk, folder)
        return adopt(tmp, dataset.content_hash)
    finally:
        download.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _extract(archive: Path, dest: Path) -> None:
    """Extract an archive this application packed (its hash checked): plain relative names
    only, never outside `dest`."""
    root = dest.resolve()
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            target = (dest / info.filename).resolve()
            if info.is_dir() or root not in target.parents:
                raise DatasetUnavailable(f"unexpected member {info.filename!r} in the archive")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
