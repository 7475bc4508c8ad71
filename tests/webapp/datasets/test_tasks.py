"""process_dataset called in this process (no worker, no eager mode) on a stored upload: good
archives become ready datasets metatrain can load, hostile ones are rejected with their reason
and leave no folder; plus the supervision that keeps datasets from being lost or stuck."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import hostile_archives as ha
import pytest
from django.core.files import File
from django.core.files.storage import default_storage
from django.utils import timezone

from metatrain.data import load_imagefolder_splits
from webapp.datasets import archive, processing, services
from webapp.datasets.models import UserDataset
from webapp.datasets.tasks import process_dataset, supervise_datasets

pytestmark = pytest.mark.usefixtures("dataset_dirs")


@pytest.fixture
def store(owner, tmp_path):
    """`store(archive_path, **fields)`: a pending dataset whose upload is that zip, saved
    through the storage API as the upload view does."""

    def make(archive: Path, **fields) -> UserDataset:
        dataset = UserDataset(
            owner=owner,
            name=archive.stem,
            upload_name=archive.name,
            upload_bytes=archive.stat().st_size,
            **fields,
        )
        with archive.open("rb") as fh:
            dataset.upload.save(archive.name, File(fh), save=True)
        return dataset

    return make


@pytest.fixture
def archives(tmp_path) -> Path:
    folder = tmp_path / "archives"
    folder.mkdir()
    return folder


def test_a_good_archive_becomes_a_ready_dataset_metatrain_loads(store, archives, dataset_dirs):
    media, cache = dataset_dirs
    dataset = store(ha.good_split_archive(archives))
    upload = dataset.upload.name

    assert process_dataset(dataset.pk) == "ready"

    dataset.refresh_from_db()
    assert dataset.status == "ready" and dataset.reason == ""
    assert (dataset.train_classes, dataset.val_classes, dataset.test_classes) == (5, 5, 5)
    assert dataset.images == 75 and dataset.uncompressed_bytes > 0
    assert dataset.min_class_images == 5
    assert dataset.layout == "splits" and dataset.folder == ""
    assert dataset.attempts == 1 and dataset.finished_at is not None
    assert sorted(dataset.class_split["val"]) == [f"val-c{i}" for i in range(5)]
    # The upload is gone; the checked dataset is one archive in storage, named by its content.
    assert dataset.upload.name == "" and not default_storage.exists(upload)
    assert dataset.archive.name == f"datasets/{dataset.pk}/{dataset.content_hash}.zip"
    with default_storage.open(dataset.archive.name) as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == dataset.content_hash
    assert dataset.archive_bytes == default_storage.size(dataset.archive.name)
    # This host keeps the folder in its cache under that hash; no temporary files are left.
    assert ha.tree(cache / ".work") == []
    assert [p.name for p in cache.iterdir() if p.name != ".work"] == [dataset.content_hash]

    data_dir = archive.local_folder(dataset)
    assert data_dir == cache / dataset.content_hash
    splits = load_imagefolder_splits(data_dir, image_size=8)
    assert splits.test.num_classes == 5 and splits.train.class_sizes().sum() == 25


def test_the_same_files_give_the_same_archive_and_any_change_another(tmp_path):
    folder = tmp_path / "set"
    (folder / "train" / "a").mkdir(parents=True)
    (folder / "train" / "a" / "1.png").write_bytes(b"one")
    (folder / "test.txt").write_bytes(b"two")
    first = archive.pack(folder, tmp_path / "first.zip")
    assert archive.pack(folder, tmp_path / "second.zip") == first
    (folder / "test.txt").write_bytes(b"three")
    assert archive.pack(folder, tmp_path / "third.zip") != first


def test_plain_class_folders_are_split_with_the_datasets_seed(store, archives):
    dataset = store(ha.good_flat_archive(archives, classes=32), split_seed=11)
    assert process_dataset(dataset.pk) == "ready"
    dataset.refresh_from_db()
    assert (dataset.train_classes, dataset.val_classes, dataset.test_classes) == (20, 5, 7)
    assert dataset.layout == "classes"
    assert dataset.class_split["seed"] == 11
    folder = archive.local_folder(dataset)
    assert dataset.class_split["val"] == sorted(p.name for p in (folder / "val").iterdir())


@pytest.mark.parametrize("name", list(ha.CASES))
def test_a_hostile_archive_is_rejected_with_its_reason_and_leaves_no_folder(
    name, store, archives, dataset_dirs, settings
):
    settings.DATASET_MAX_FILES = ha.TEST_LIMITS.max_files
    case = ha.CASES[name]
    dataset = store(case.build(archives))
    upload = dataset.upload.name

    assert process_dataset(dataset.pk) == "rejected"

    dataset.refresh_from_db()
    assert dataset.status == "rejected"
    assert case.message in dataset.reason
    assert dataset.images == 0 and dataset.folder == "" and not dataset.archive
    assert ha.tree(dataset_dirs[1] / ".work") == []  # no dataset folder, no temporary folder
    assert [p.name for p in dataset_dirs[1].iterdir()] == [".work"]
    assert not default_storage.exists(upload)


def test_a_dataset_that_is_not_pending_is_left_alone(store, archives):
    dataset = store(ha.good_split_archive(archives))
    assert process_dataset(dataset.pk) == "ready"
    assert process_dataset(dataset.pk) == "not-claimed"  # a duplicate message is harmless
    assert process_dataset(999_999) == "not-claimed"
    dataset.refresh_from_db()
    assert dataset.status == "ready" and dataset.attempts == 1


def test_a_dataset_deleted_while_it_is_checked_leaves_no_folder(
    store, archives, dataset_dirs, monkeypatch
):
    dataset = store(ha.good_split_archive(archives))
    real_validate = processing._validate

    def validate_then_vanish(root, result):
        summary = real_validate(root, result)
        UserDataset.objects.filter(pk=dataset.pk).delete()  # the owner pressed Delete
        return summary

    monkeypatch.setattr(processing, "_validate", validate_then_vanish)
    assert process_dataset(dataset.pk) == "gone"
    assert ha.tree(dataset_dirs[1] / ".work") == []
    assert not default_storage.exists(f"datasets/{dataset.pk}") or (
        default_storage.listdir(f"datasets/{dataset.pk}")[1] == []
    )


def test_leftovers_of_a_killed_attempt_are_cleaned_before_retrying(store, archives, dataset_dirs):
    work = processing.work_root()
    dataset = store(ha.good_split_archive(archives))
    (work / f".{dataset.pk}.tmp-deadbeef" / "train").mkdir(parents=True)
    (work / f".{dataset.pk}.upload-deadbeef.zip").write_bytes(b"partial")
    (work / f".{dataset.pk}.pack-deadbeef.zip").write_bytes(b"partial")
    (work / str(dataset.pk) / "train").mkdir(parents=True)  # moved, then the worker died
    other = work / f".{dataset.pk + 1}.tmp-cafe"
    other.mkdir()  # another dataset's work: not ours to touch

    assert process_dataset(dataset.pk) == "ready"
    assert [p.name for p in work.iterdir()] == [other.name]
    dataset.refresh_from_db()
    assert (archive.local_folder(dataset) / "test").is_dir()


def test_an_upload_on_object_storage_is_copied_locally_and_the_copy_removed(
    store, archives, dataset_dirs, monkeypatch
):
    dataset = store(ha.good_split_archive(archives))

    copies = []
    real_archive = processing.safe_extract

    def record_archive(archive, *args, **kwargs):
        copies.append(Path(archive))
        assert Path(archive).is_file()
        return real_archive(archive, *args, **kwargs)

    monkeypatch.setattr(processing, "_local_path", lambda storage, name: None)
    monkeypatch.setattr(processing, "safe_extract", record_archive)
    assert process_dataset(dataset.pk) == "ready"
    work = processing.work_root()
    assert copies[0].parent == work and copies[0].name.startswith(f".{dataset.pk}.upload-")
    assert list(work.iterdir()) == []


def test_a_missing_upload_is_rejected_with_a_reason(store, archives):
    dataset = store(ha.good_split_archive(archives))
    default_storage.delete(dataset.upload.name)
    assert process_dataset(dataset.pk) == "rejected"
    dataset.refresh_from_db()
    assert dataset.reason == "The uploaded file is missing; upload it again."


def test_a_server_error_rejects_without_showing_server_paths(
    store, archives, dataset_dirs, monkeypatch
):
    dataset = store(ha.good_split_archive(archives))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", "/srv/secret/datasets/.1.tmp/x.png")

    monkeypatch.setattr(processing, "safe_extract", disk_full)
    assert process_dataset(dataset.pk) == "rejected"
    dataset.refresh_from_db()
    assert "server error (OSError)" in dataset.reason
    assert "/srv/secret" not in dataset.reason
    assert ha.tree(dataset_dirs[1] / ".work") == []


def test_dataset_data_dir_refuses_a_dataset_that_is_not_ready(owner):
    dataset = UserDataset.objects.create(owner=owner, name="x", status="validating")
    with pytest.raises(services.DatasetError, match="validating, not ready"):
        services.dataset_data_dir(dataset)


# ------------------------------------------------------------------------------------------
# Supervision
# ------------------------------------------------------------------------------------------
def test_supervision_sends_pending_datasets_whose_message_never_left(owner, sent):
    never = UserDataset.objects.create(owner=owner, name="never sent")
    long_ago = UserDataset.objects.create(
        owner=owner, name="lost", dispatched_at=timezone.now() - timedelta(hours=1)
    )
    UserDataset.objects.create(owner=owner, name="just sent", dispatched_at=timezone.now())
    UserDataset.objects.create(owner=owner, name="done", status="ready")

    assert supervise_datasets()["sent"] == 2
    assert sorted(args[0] for _, args, _ in sent) == sorted([never.pk, long_ago.pk])
    never.refresh_from_db()
    assert never.dispatched_at is not None


def test_supervision_retries_a_stuck_dataset_then_rejects_it(owner, sent, settings):
    settings.DATASET_MAX_ATTEMPTS = 2
    old = timezone.now() - timedelta(seconds=services.hard_time_limit() + 3600)
    retry = UserDataset.objects.create(
        owner=owner, name="retry", status="validating", started_at=old, attempts=1
    )
    give_up = UserDataset.objects.create(
        owner=owner, name="give up", status="validating", started_at=old, attempts=2
    )
    busy = UserDataset.objects.create(
        owner=owner, name="busy", status="validating", started_at=timezone.now(), attempts=1
    )

    result = supervise_datasets()

    assert (result["requeued"], result["rejected"]) == (1, 1)
    retry.refresh_from_db()
    give_up.refresh_from_db()
    busy.refresh_from_db()
    assert retry.status == "pending" and retry.dispatched_at is not None
    assert [args for _, args, _ in sent] == [[retry.pk]]
    assert give_up.status == "rejected" and "stopped 2 times" in give_up.reason
    assert busy.status == "validating"
