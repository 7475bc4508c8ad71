"""The worker's side of an upload: claim the dataset, extract and validate the zip, record the
outcome. Called by the Celery task `webapp.datasets.tasks.process_dataset`, and by tests
directly.

Only the worker that moves the row from pending to validating (a conditional UPDATE) works on
it; the outcome is written with another conditional UPDATE, so a dataset deleted (or given to
another attempt) meanwhile is left alone and the folder this attempt made is removed. Whatever
happens, no temporary folder and no half-extracted dataset is left: `safe_extract` moves the
folder into place only once everything is valid.

A valid folder is packed into one archive named by its content hash and stored (the storage
every host shares, see `archive`); the folder itself joins this host's dataset cache, and any
other worker host fetches the archive the first time a run there needs it.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db.models import F
from django.utils import timezone

from . import archive, services
from .extraction import DatasetRejected, ExtractionResult, safe_extract
from .models import UserDataset
from .validation import DatasetSummary, validate_dataset

logger = logging.getLogger(__name__)

_COPY_CHUNK = 1024 * 1024

NOT_CLAIMED = "not-claimed"
GONE = "gone"


def process_dataset(dataset_id: int) -> str:
    """Take a pending dataset to ready or rejected; returns the outcome (for logs and tests)."""
    started = timezone.now()
    claimed = UserDataset.objects.filter(pk=dataset_id, status=UserDataset.Status.PENDING).update(
        status=UserDataset.Status.VALIDATING,
        started_at=started,
        finished_at=None,
        reason="",
        attempts=F("attempts") + 1,
    )
    if not claimed:
        logger.info("dataset %s not claimed (gone, or not pending)", dataset_id)
        return NOT_CLAIMED
    dataset = UserDataset.objects.filter(pk=dataset_id).first()
    if dataset is None:
        return GONE
    root = work_root()
    root.mkdir(parents=True, exist_ok=True)
    dest = root / str(dataset.pk)
    _remove_leftovers(root, dataset.pk)
    try:
        with local_archive(dataset, root) as upload_zip:
            result = safe_extract(
                upload_zip,
                dest,
                services.extraction_limits(),
                split_seed=dataset.split_seed,
                check=_validate,
            )
    except DatasetRejected as err:
        return _reject(dataset, started, err.message)
    except SoftTimeLimitExceeded:
        limit = settings.DATASET_TASK_TIME_LIMIT_SECONDS
        return _reject(
            dataset,
            started,
            f"Checking the archive took longer than the {limit // 60} minute limit; upload a "
            "smaller archive.",
        )
    except Exception as exc:
        logger.exception("dataset %s could not be processed", dataset.pk)
        return _reject(
            dataset,
            started,
            f"The archive could not be processed because of a server error "
            f"({type(exc).__name__}); it was logged. Upload it again later, or ask staff.",
        )
    try:
        stored, content_hash, size = _store(dataset.pk, dest, root)
    except Exception:
        # Storage unreachable: not the user's fault, and the upload is still there. Leave the
        # row validating; supervise_datasets retries it after the time limit.
        logger.exception("dataset %s valid but could not be stored", dataset.pk)
        shutil.rmtree(dest, ignore_errors=True)
        return "store-failed"
    cached = archive.adopt(dest, content_hash)
    return _ready(dataset, started, result, stored, content_hash, size, cached)


def work_root() -> Path:
    """Where uploads are extracted and checked, beside this host's dataset cache."""
    return Path(settings.DATASET_CACHE_ROOT) / ".work"


def _store(pk: int, folder: Path, root: Path) -> tuple[str, str, int]:
    """Pack the validated folder and upload it; returns (stored name, sha256, bytes)."""
    packed = root / f".{pk}.pack-{uuid.uuid4().hex[:12]}.zip"
    try:
        content_hash = archive.pack(folder, packed)
        size = packed.stat().st_size
        return archive.store(pk, packed, content_hash), content_hash, size
    finally:
        packed.unlink(missing_ok=True)


def _validate(root: Path, result: ExtractionResult) -> DatasetSummary:
    return validate_dataset(
        root,
        min_classes=settings.DATASET_MIN_CLASSES_PER_SPLIT,
        min_images=settings.DATASET_MIN_IMAGES_PER_CLASS,
        layout=result.layout,
        max_image_pixels=settings.DATASET_MAX_IMAGE_PIXELS,
    )


def _ready(
    dataset: UserDataset,
    started,
    result: ExtractionResult,
    stored: str,
    content_hash: str,
    size: int,
    cached: Path,
) -> str:
    summary: DatasetSummary = result.check_result
    saved = _this_attempt(dataset, started).update(
        status=UserDataset.Status.READY,
        reason="",
        layout=result.layout,
        class_split=result.class_split,
        train_classes=summary.class_count("train"),
        val_classes=summary.class_count("val"),
        test_classes=summary.class_count("test"),
        images=summary.images,
        min_class_images=summary.min_class_images,
        uncompressed_bytes=result.uncompressed_bytes,
        folder="",
        archive=stored,
        content_hash=content_hash,
        archive_bytes=size,
        finished_at=timezone.now(),
        upload="",
    )
    if not saved:  # deleted while we worked (or handed to another attempt): undo our archive
        logger.info("dataset %s gone while it was processed; removing its archive", dataset.pk)
        services.delete_upload(stored)
        return GONE
    services.delete_upload(dataset.upload.name)
    logger.info("dataset %s ready: %s images", dataset.pk, summary.images)
    return UserDataset.Status.READY


def _reject(dataset: UserDataset, started, reason: str) -> str:
    saved = _this_attempt(dataset, started).update(
        status=UserDataset.Status.REJECTED,
        reason=reason,
        finished_at=timezone.now(),
        upload="",
    )
    if not saved:
        return GONE
    services.delete_upload(dataset.upload.name)
    logger.info("dataset %s rejected: %s", dataset.pk, reason)
    return UserDataset.Status.REJECTED


def _this_attempt(dataset: UserDataset, started):
    return UserDataset.objects.filter(
        pk=dataset.pk, status=UserDataset.Status.VALIDATING, started_at=started
    )


def _remove_leftovers(root: Path, pk: int) -> None:
    """What an earlier attempt killed mid-way may have left: its temporary folder, its copy of
    the upload or its packed archive, or a folder moved into place just before the worker
    died (the row never said ready, so nothing uses it)."""
    leftovers = [
        *root.glob(f".{pk}.tmp-*"),
        *root.glob(f".{pk}.upload-*"),
        *root.glob(f".{pk}.pack-*"),
        root / str(pk),
    ]
    for leftover in leftovers:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def local_archive(dataset: UserDataset, root: Path) -> Iterator[Path]:
    """The uploaded zip as a local file: the stored file itself on a local storage, else a
    copy (zipfile needs to seek) next to the datasets, deleted afterwards."""
    name = dataset.upload.name
    storage = dataset.upload.storage
    if not name or not storage.exists(name):
        raise DatasetRejected("missing_upload", "The uploaded file is missing; upload it again.")
    local = _local_path(storage, name)
    if local is not None:
        yield local
        return
    copy = root / f".{dataset.pk}.upload-{uuid.uuid4().hex[:12]}.zip"
    limit = settings.DATASET_MAX_UPLOAD_BYTES
    try:
        with storage.open(name, "rb") as src, open(copy, "xb") as dst:
            copied = 0
            while chunk := src.read(_COPY_CHUNK):
                copied += len(chunk)
                if copied > limit:
                    raise DatasetRejected(
                        "archive_too_large",
                        f"The archive is larger than the {services.format_bytes(limit)} limit.",
                    )
                dst.write(chunk)
        yield copy
    finally:
        copy.unlink(missing_ok=True)


def _local_path(storage, name: str) -> Path | None:
    """The stored file's path on this machine, or None on an object storage (S3 and the like)."""
    try:
        return Path(storage.path(name))
    except NotImplementedError:
        return None
