"""A dataset a user uploaded: a zip of class folders, checked by a worker, then an image folder
that experiments with dataset="imagefolder" can train on."""

from __future__ import annotations

import uuid
from pathlib import Path

from django.conf import settings
from django.db import models
from django.urls import reverse


def upload_path(instance: UserDataset, filename: str) -> str:
    """Where the uploaded zip is stored: a random name, never the user's file name."""
    return f"dataset-uploads/{uuid.uuid4().hex}.zip"


class UserDataset(models.Model):
    """One uploaded dataset, kept current by the worker.

    State machine::

        pending ──claim──▶ validating ──▶ ready      (extracted to DATASETS_ROOT/<id>/)
           ▲                   │    └───▶ rejected   (reason says what, which member, which limit)
           └─ worker lost ─────┘                     (retried up to DATASET_MAX_ATTEMPTS times)

    The request only stores the zip and saves the row as pending; a worker claims it with a
    conditional UPDATE (pending -> validating), extracts and validates it into a temporary
    folder, and moves the folder into place only when everything is valid. The zip is deleted
    once the dataset is ready or rejected: the folder (or the reason) is what is kept.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        VALIDATING = "validating", "Validating"
        READY = "ready", "Ready"
        REJECTED = "rejected", "Rejected"

    FINAL_STATUSES = (Status.READY, Status.REJECTED)
    # The run-status badge colours (static/css/app.css) that match each state.
    BADGE = {
        "pending": "queued",
        "validating": "running",
        "ready": "succeeded",
        "rejected": "failed",
    }

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="datasets"
    )
    name = models.CharField(max_length=200)
    is_public = models.BooleanField(
        default=False, help_text="every logged-in user may see it and train on it once ready"
    )
    status = models.CharField(
        max_length=12, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    reason = models.TextField(blank=True, help_text="why it was rejected")

    # The upload, until the worker is done with it.
    upload = models.FileField(upload_to=upload_path, blank=True, max_length=255)
    upload_name = models.CharField(max_length=255, blank=True, help_text="the user's file name")
    upload_bytes = models.BigIntegerField(default=0)

    # What the worker found.
    layout = models.CharField(
        max_length=16,
        blank=True,
        help_text="splits (train/val/test given) or classes (split by us)",
    )
    split_seed = models.IntegerField(
        default=0, help_text="seed of the 64/16/20 class split, for plain class folders"
    )
    class_split = models.JSONField(
        default=dict, blank=True, help_text="class names per split, and how they were split"
    )
    train_classes = models.IntegerField(default=0)
    val_classes = models.IntegerField(default=0)
    test_classes = models.IntegerField(default=0)
    images = models.IntegerField(default=0)
    min_class_images = models.IntegerField(
        default=0, help_text="images in the smallest class: the most shots + queries a task can use"
    )
    uncompressed_bytes = models.BigIntegerField(default=0)
    folder = models.CharField(
        max_length=255,
        blank=True,
        help_text="legacy: the extracted folder, relative to DATASETS_ROOT (datasets made before "
        "archives were kept in storage)",
    )
    # The validated dataset as one archive in storage, named by its content: every worker host
    # fetches it once into its own cache (DATASET_CACHE_ROOT/<content_hash>/).
    archive = models.FileField(upload_to="datasets/", blank=True, max_length=255)
    content_hash = models.CharField(
        max_length=64, blank=True, db_index=True, help_text="sha256 of the stored archive"
    )
    archive_bytes = models.BigIntegerField(default=0)

    # Supervision (as for runs: the row is the outbox, the worker's claim is a conditional UPDATE).
    attempts = models.IntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["is_public", "status"])]

    def __str__(self) -> str:
        return f"{self.name} (dataset #{self.pk}, {self.status})"

    def get_absolute_url(self) -> str:
        return reverse("dataset-detail", args=[self.pk])

    @property
    def is_ready(self) -> bool:
        return self.status == self.Status.READY

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL_STATUSES

    @property
    def badge(self) -> str:
        return self.BADGE.get(self.status, "queued")

    @property
    def path(self) -> Path:
        """Where this dataset's folder is (or would be): DATASETS_ROOT/<id>."""
        return dataset_folder(self.pk)


def dataset_folder(pk: int) -> Path:
    """The extracted folder of dataset `pk`. Built from the id only, never from user input."""
    return Path(settings.DATASETS_ROOT) / str(int(pk))
