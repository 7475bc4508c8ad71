"""Operations on uploaded datasets shared by the views (and, later, the JSON API): store an
upload and enqueue it, send and resend its message, delete a dataset, and give an experiment
the folder of a ready one.

Like runs (webapp/experiments/dispatch.py), the database row is the outbox: a dataset saved
while the broker is down stays pending and `dispatch_pending_datasets` sends it later, and a
duplicate message is harmless because the worker must win a conditional UPDATE to process it.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import ProtectedError, Q
from django.utils import timezone

from .extraction import Limits
from .models import UserDataset, dataset_folder

logger = logging.getLogger(__name__)

PROCESS_TASK = "webapp.datasets.tasks.process_dataset"
# A stuck "validating" dataset is retried this long after its task's hard time limit.
STUCK_GRACE_SECONDS = 5 * 60
# Extra seconds past the soft limit before Celery kills a processing task.
HARD_LIMIT_GRACE_SECONDS = 60


class DatasetError(ValueError):
    """A request about a dataset that cannot be carried out; the message is for the user."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# ------------------------------------------------------------------------------------------
# Limits, from settings
# ------------------------------------------------------------------------------------------
def extraction_limits() -> Limits:
    """The archive limits in force (DATASET_* settings)."""
    return Limits(
        max_archive_bytes=settings.DATASET_MAX_UPLOAD_BYTES,
        max_total_bytes=settings.DATASET_MAX_UNCOMPRESSED_BYTES,
        max_file_bytes=settings.DATASET_MAX_FILE_BYTES,
        max_files=settings.DATASET_MAX_FILES,
        max_ratio=float(settings.DATASET_MAX_COMPRESSION_RATIO),
        max_image_pixels=settings.DATASET_MAX_IMAGE_PIXELS,
    )


def hard_time_limit() -> int:
    return settings.DATASET_TASK_TIME_LIMIT_SECONDS + HARD_LIMIT_GRACE_SECONDS


# ------------------------------------------------------------------------------------------
# Upload
# ------------------------------------------------------------------------------------------
def create_dataset(
    owner,
    *,
    name: str,
    archive: UploadedFile,
    is_public: bool = False,
    split_seed: int = 0,
    check: Callable[[], None] | None = None,
) -> UserDataset:
    """Store the uploaded zip through the storage API, save the dataset as pending, and
    enqueue its processing after commit. Nothing is opened or extracted here.

    `check` (the owner's quotas) runs in the transaction that saves the row, before it; what
    it raises leaves nothing behind. The zip is stored before that transaction begins: sending
    200 MB to S3 can take minutes, and a transaction left idle that long would hold the owner's
    row locked and be ended by PostgreSQL (DB_IDLE_IN_TRANSACTION_SECONDS)."""
    limit = settings.DATASET_MAX_UPLOAD_BYTES
    if archive.size is None or archive.size > limit:
        raise DatasetError(
            f"The file is larger than the {format_bytes(limit)} limit.", field="archive"
        )
    dataset = UserDataset(
        owner=owner,
        name=name,
        is_public=is_public,
        split_seed=split_seed,
        upload_name=Path(archive.name or "upload.zip").name[:255],
        upload_bytes=archive.size,
    )
    dataset.upload.save(archive.name or "upload.zip", archive, save=False)
    try:
        with transaction.atomic():
            if check is not None:
                check()
            dataset.save()
            enqueue_on_commit(dataset)
    except BaseException:
        dataset.upload.storage.delete(dataset.upload.name)  # no orphan file for a row never saved
        raise
    return dataset


def send_dataset(dataset_id: int) -> bool:
    """Publish one dataset's message; False (and it stays pending) when the broker is down."""
    from webapp.celery import app

    try:
        app.send_task(PROCESS_TASK, args=[dataset_id], queue=settings.DATASET_QUEUE, retry=False)
    except Exception as exc:  # kombu raises many kinds of connection errors
        logger.warning("dataset %s not dispatched, broker unavailable: %s", dataset_id, exc)
        return False
    UserDataset.objects.filter(pk=dataset_id, status=UserDataset.Status.PENDING).update(
        dispatched_at=timezone.now()
    )
    return True


def enqueue_on_commit(dataset: UserDataset) -> None:
    """Send the dataset's message once the transaction that saved it has committed."""
    pk = dataset.pk
    transaction.on_commit(lambda: send_dataset(pk))


# ------------------------------------------------------------------------------------------
# Supervision: nothing lost, nothing stuck
# ------------------------------------------------------------------------------------------
def dispatch_pending_datasets(resend_after: timedelta = timedelta(minutes=10)) -> int:
    """Send every pending dataset never dispatched, or dispatched long ago and still not
    claimed (the message was lost). Returns how many were sent."""
    cutoff = timezone.now() - resend_after
    pending = UserDataset.objects.filter(status=UserDataset.Status.PENDING).filter(
        Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=cutoff)
    )
    return sum(send_dataset(pk) for pk in pending.values_list("pk", flat=True))


def requeue_stuck_datasets() -> dict[str, int]:
    """A dataset validating for longer than the task's hard time limit lost its worker (killed,
    out of memory, machine gone): put it back to pending, or reject it after
    DATASET_MAX_ATTEMPTS tries. Returns counts {"requeued": n, "rejected": m}."""
    cutoff = timezone.now() - timedelta(seconds=hard_time_limit() + STUCK_GRACE_SECONDS)
    stuck = UserDataset.objects.filter(status=UserDataset.Status.VALIDATING, started_at__lt=cutoff)
    requeued = rejected = 0
    for dataset in stuck:
        same = UserDataset.objects.filter(
            pk=dataset.pk, status=UserDataset.Status.VALIDATING, started_at=dataset.started_at
        )
        if dataset.attempts < settings.DATASET_MAX_ATTEMPTS:
            requeued += same.update(status=UserDataset.Status.PENDING, dispatched_at=None)
            continue
        reason = (
            f"Processing stopped {dataset.attempts} times without finishing (the worker was "
            "stopped or ran out of time or memory). Try a smaller archive, or ask staff."
        )
        if same.update(
            status=UserDataset.Status.REJECTED,
            reason=reason,
            finished_at=timezone.now(),
            upload="",
        ):
            rejected += 1
            delete_upload(dataset.upload.name)
    if requeued:
        dispatch_pending_datasets()
    return {"requeued": requeued, "rejected": rejected}


# ------------------------------------------------------------------------------------------
# Use by experiments
# ------------------------------------------------------------------------------------------
def dataset_data_dir(dataset: UserDataset) -> str:
    """The folder to give metatrain as `data_dir` with dataset="imagefolder".

    Only for a ready dataset: its folder holds train/, val/ and test/ class folders that passed
    every check. Built from the dataset's id under DATASETS_ROOT, never from anything a user
    typed. Raises DatasetError otherwise.
    """
    if dataset.status != UserDataset.Status.READY:
        raise DatasetError(
            f"Dataset '{dataset.name}' is {dataset.get_status_display().lower()}, not ready.",
            field="user_dataset",
        )
    return str(dataset_folder(dataset.pk))


def runs_using(dataset: UserDataset):
    """Queued, running or lost (to be resumed) runs that train on this dataset."""
    from webapp.experiments.models import Run

    return Run.objects.filter(
        status__in=[Run.Status.QUEUED, Run.Status.RUNNING, Run.Status.LOST],
        experiment__user_dataset=dataset,
    )


def experiments_using(dataset: UserDataset) -> int:
    """How many experiments (anyone's, in any state) were made on this dataset."""
    return dataset.experiments.count()


# ------------------------------------------------------------------------------------------
# Delete
# ------------------------------------------------------------------------------------------
@transaction.atomic
def delete_dataset(dataset: UserDataset) -> None:
    """Delete the dataset, its folder and its upload. Refused while a run that has not
    finished trains on it, and while any experiment (finished or not, anyone's) was made on
    it: their results would lose their data. Allowed while it is being validated: the worker
    then finds the row gone and removes what it made."""
    # Lock the row first: an experiment being created on this dataset locks it too, so the
    # check below cannot miss one that commits in between.
    UserDataset.objects.select_for_update().filter(pk=dataset.pk).first()
    active = runs_using(dataset).count()
    if active:
        raise DatasetError(
            f"{active} run{'s' if active != 1 else ''} that ha{'ve' if active != 1 else 's'} not "
            "finished use this dataset; cancel or wait for them first."
        )
    used = experiments_using(dataset)
    if used:
        raise DatasetError(_used_by_message(used))
    folder = dataset_folder(dataset.pk)
    upload = dataset.upload.name
    stored = dataset.archive.name
    try:
        dataset.delete()
    except ProtectedError as err:  # an experiment made after the count above
        raise DatasetError(_used_by_message(len(err.protected_objects))) from None

    def _remove_files() -> None:
        # The archive in storage and a legacy folder go; hosts' cache folders are named by
        # content, which another dataset may share, and are left to the cache's owner.
        remove_folder(folder)
        for name in (upload, stored):
            if name:
                delete_upload(name)

    transaction.on_commit(_remove_files)


def _used_by_message(count: int) -> str:
    return (
        f"{count} experiment{'s' if count != 1 else ''} {'were' if count != 1 else 'was'} made "
        "on this dataset, so it is kept while they exist: their results depend on it. Delete "
        "those experiments first (other users' experiments only they or staff can delete)."
    )


def remove_folder(folder: Path) -> None:
    """Delete a dataset folder, only ever one directly inside DATASETS_ROOT."""
    root = Path(settings.DATASETS_ROOT).resolve()
    if folder.resolve().parent != root:
        raise ValueError(f"refusing to delete {folder}: not a dataset folder under {root}")
    shutil.rmtree(folder, ignore_errors=True)


def delete_upload(name: str) -> None:
    from django.core.files.storage import default_storage

    if name:
        try:
            default_storage.delete(name)
        except OSError:
            logger.warning("could not delete dataset upload %s", name, exc_info=True)


def format_bytes(n: float) -> str:
    """200 MiB, 1.0 GiB: sizes for messages."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if n == int(n) else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} bytes"
