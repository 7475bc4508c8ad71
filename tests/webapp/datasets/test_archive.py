"""A ready dataset on a worker host (webapp/datasets/archive.py): fetched from storage into the
host's cache the first time, checked against its recorded hash, reused afterwards; a dataset
from before archives were stored is read from its old folder."""

from __future__ import annotations

import hostile_archives as ha
import pytest
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from webapp.datasets import archive
from webapp.datasets.models import UserDataset, dataset_folder
from webapp.datasets.tasks import process_dataset

pytestmark = pytest.mark.usefixtures("dataset_dirs")


@pytest.fixture
def ready(owner, tmp_path):
    """A dataset validated on another host: its archive in storage, this host's cache empty."""
    folder = tmp_path / "archives"
    folder.mkdir()
    upload = ha.good_split_archive(folder)
    dataset = UserDataset(owner=owner, name="birds", upload_name=upload.name)
    with upload.open("rb") as fh:
        dataset.upload.save(upload.name, File(fh), save=True)
    assert process_dataset(dataset.pk) == "ready"
    dataset.refresh_from_db()
    return dataset


def _empty_cache(settings, tmp_path, name: str):
    settings.DATASET_CACHE_ROOT = tmp_path / name
    return settings.DATASET_CACHE_ROOT


def test_a_host_with_an_empty_cache_fetches_the_archive_once(ready, settings, tmp_path):
    cache = _empty_cache(settings, tmp_path, "worker-cache")

    folder = archive.local_folder(ready)

    assert folder == cache / ready.content_hash
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "test", "train", "val"]
    assert [p.name for p in cache.iterdir()] == [ready.content_hash]  # nothing left beside it
    default_storage.delete(ready.archive.name)
    assert archive.local_folder(ready) == folder  # cached: storage is not asked again


def test_an_archive_changed_in_storage_is_refused(ready, settings, tmp_path):
    _empty_cache(settings, tmp_path, "worker-cache")
    default_storage.delete(ready.archive.name)
    default_storage.save(ready.archive.name, ContentFile(b"PK\x05\x06" + b"\0" * 18))
    with pytest.raises(archive.DatasetUnavailable, match="sha256"):
        archive.local_folder(ready)
    assert list((tmp_path / "worker-cache").iterdir()) == []


def test_a_missing_archive_says_so(ready, settings, tmp_path):
    _empty_cache(settings, tmp_path, "worker-cache")
    default_storage.delete(ready.archive.name)
    with pytest.raises(archive.DatasetUnavailable, match="missing from storage"):
        archive.local_folder(ready)


def test_a_dataset_from_before_archives_uses_its_old_folder_or_says_what_to_do(owner):
    old = UserDataset.objects.create(owner=owner, name="old", status="ready", folder="9")
    with pytest.raises(archive.DatasetUnavailable, match="upload it again"):
        archive.local_folder(old)
    dataset_folder(old.pk).mkdir(parents=True)
    assert archive.local_folder(old) == dataset_folder(old.pk)
