"""Per-user limits of a shared server: runs waiting or training, meta-iterations still to do,
uploaded datasets and their size. Configured by the QUOTA_* settings (0: no limit); staff are
exempt (they run the server and can change the settings), except for the per-run meta-iteration
cap, which is a bound on one run and lives with the other field checks (validation.py).

Race-safety: each check runs inside the transaction that creates the runs or the dataset, after
`lock_user` has locked the user's row (SELECT ... FOR UPDATE on PostgreSQL; SQLite takes its
write lock when the transaction begins, settings.py's IMMEDIATE mode). Two requests of one user
are therefore counted one after the other, and cannot both slip under a limit.

Every refusal is a QuotaExceeded naming the setting, the user's usage, and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import BigIntegerField, Count, F, Q, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce, Greatest

from metatrain import Config
from webapp.datasets.models import UserDataset
from webapp.datasets.services import format_bytes

from .errors import QuotaExceeded
from .models import Run

# Runs that hold (or will hold) a worker: a lost run is resumed.
ACTIVE = (Run.Status.QUEUED, Run.Status.RUNNING, Run.Status.LOST)
WAITING = (Run.Status.QUEUED, Run.Status.LOST)


def exempt(user) -> bool:
    return bool(user.is_staff)


def lock_user(user) -> None:
    """Hold the user's row until the transaction ends: the quota checks of one user run one
    at a time. Must be called inside a transaction."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("lock_user needs a transaction (transaction.atomic)")
    get_user_model().objects.select_for_update().filter(pk=user.pk).exists()


@dataclass(frozen=True)
class RunUsage:
    active_runs: int  # queued, running or lost
    waiting_runs: int  # queued or lost
    active_meta_iters: int  # meta-iterations the active runs still have to do


def run_usage(user) -> RunUsage:
    runs = Run.objects.filter(experiment__owner=user, status__in=ACTIVE)
    # The run's own config says how long it is (the worker sets total_iterations only once it
    # starts); what a run has done no longer holds a worker.
    remaining = Cast(KT("config__meta_iters"), BigIntegerField()) - F("iteration")
    totals = runs.aggregate(
        active=Count("id"),
        waiting=Count("id", filter=Q(status__in=WAITING)),
        iters=Coalesce(Sum(remaining), 0),
    )
    return RunUsage(totals["active"], totals["waiting"], max(0, totals["iters"]))


def check_run_quotas(user, run_configs: list[Config]) -> None:
    """Refuse new runs that would take `user` past QUOTA_MAX_ACTIVE_RUNS,
    QUOTA_MAX_QUEUED_RUNS or QUOTA_MAX_ACTIVE_META_ITERS. Locks the user's row."""
    if exempt(user):
        return
    lock_user(user)
    usage = run_usage(user)
    adding = len(run_configs)
    iters = sum(cfg.meta_iters for cfg in run_configs)
    plural = "s" if adding != 1 else ""

    limit = settings.QUOTA_MAX_ACTIVE_RUNS
    if limit and usage.active_runs + adding > limit:
        raise QuotaExceeded(
            f"You have {usage.active_runs} active runs (queued, running or lost); this "
            f"experiment would add {adding} run{plural} and the limit is {limit} per user "
            "(QUOTA_MAX_ACTIVE_RUNS). Wait for runs to finish, cancel some, or use fewer seeds.",
            quota="QUOTA_MAX_ACTIVE_RUNS",
            limit=limit,
            usage=usage.active_runs,
            requested=adding,
        )
    limit = settings.QUOTA_MAX_QUEUED_RUNS
    if limit and usage.waiting_runs + adding > limit:
        raise QuotaExceeded(
            f"You have {usage.waiting_runs} runs waiting for a worker (queued or lost); this "
            f"experiment would add {adding} run{plural} and the limit is {limit} per user "
            "(QUOTA_MAX_QUEUED_RUNS). Wait for some to start, cancel some, or use fewer seeds.",
            quota="QUOTA_MAX_QUEUED_RUNS",
            limit=limit,
            usage=usage.waiting_runs,
            requested=adding,
        )
    limit = settings.QUOTA_MAX_ACTIVE_META_ITERS
    if limit and usage.active_meta_iters + iters > limit:
        raise QuotaExceeded(
            f"Your active runs still have {usage.active_meta_iters:,} meta-iterations to do; "
            f"this experiment would add {adding} × {run_configs[0].meta_iters:,} = {iters:,} "
            f"and the limit is {limit:,} per user (QUOTA_MAX_ACTIVE_META_ITERS). Wait for runs "
            "to finish, cancel some, or ask for fewer meta_iters or seeds.",
            quota="QUOTA_MAX_ACTIVE_META_ITERS",
            limit=limit,
            usage=usage.active_meta_iters,
            requested=iters,
        )


@dataclass(frozen=True)
class DatasetUsage:
    datasets: int  # not rejected: pending, validating or ready
    bytes: int  # their extracted size (their archive's while not yet extracted)


def dataset_usage(user) -> DatasetUsage:
    kept = UserDataset.objects.filter(owner=user).exclude(status=UserDataset.Status.REJECTED)
    totals = kept.aggregate(
        n=Count("id"),
        size=Coalesce(Sum(Greatest("uncompressed_bytes", "upload_bytes")), 0),
    )
    return DatasetUsage(totals["n"], totals["size"])


def check_dataset_quotas(user, upload_bytes: int) -> None:
    """Refuse an upload that would take `user` past QUOTA_MAX_DATASETS or
    QUOTA_MAX_DATASET_BYTES. Locks the user's row.

    Only the archive's size is known before a worker extracts it, so the new dataset counts
    at that size: a user can pass the byte limit by at most one dataset's extracted size, and
    their next upload is refused."""
    if exempt(user):
        return
    lock_user(user)
    usage = dataset_usage(user)
    limit = settings.QUOTA_MAX_DATASETS
    if limit and usage.datasets + 1 > limit:
        raise QuotaExceeded(
            f"You have {usage.datasets} datasets and the limit is {limit} per user "
            "(QUOTA_MAX_DATASETS). Delete one you no longer need, then upload again.",
            quota="QUOTA_MAX_DATASETS",
            limit=limit,
            usage=usage.datasets,
            requested=1,
        )
    limit = settings.QUOTA_MAX_DATASET_BYTES
    if limit and usage.bytes + upload_bytes > limit:
        raise QuotaExceeded(
            f"Your datasets take {format_bytes(usage.bytes)}; this archive adds "
            f"{format_bytes(upload_bytes)} and the limit is {format_bytes(limit)} per user "
            "(QUOTA_MAX_DATASET_BYTES). Delete datasets you no longer need, or upload a "
            "smaller archive.",
            quota="QUOTA_MAX_DATASET_BYTES",
            limit=limit,
            usage=usage.bytes,
            requested=upload_bytes,
        )
