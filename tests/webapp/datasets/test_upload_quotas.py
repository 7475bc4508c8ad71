"""Upload quotas (QUOTA_MAX_DATASETS, QUOTA_MAX_DATASET_BYTES): an upload past them is refused
on the form, naming the limit and the usage, before anything is stored or sent, and again
under a lock once the archive is stored (outside any transaction); rejected datasets do not
count; staff are exempt; the upload page shows the usage."""

from __future__ import annotations

import hostile_archives as ha
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.urls import reverse

from webapp.datasets.models import UserDataset

pytestmark = pytest.mark.usefixtures("dataset_dirs")

ARCHIVE = b"PK\x05\x06" + bytes(18)  # an empty zip: the request does not open it


def upload(client, content: bytes = ARCHIVE):
    data = {"name": "more", "split_seed": "0"}
    data["archive"] = SimpleUploadedFile("more.zip", content, content_type="application/zip")
    return client.post(reverse("dataset-upload"), data)


def dataset(owner, status="ready", **fields) -> UserDataset:
    return UserDataset.objects.create(owner=owner, name="old", status=status, **fields)


@pytest.fixture
def limits(settings):
    settings.QUOTA_MAX_DATASETS = 0
    settings.QUOTA_MAX_DATASET_BYTES = 0
    return settings


def test_it_refuses_an_upload_beyond_the_dataset_count(client, owner, limits, sent, dataset_dirs):
    limits.QUOTA_MAX_DATASETS = 2
    dataset(owner)
    dataset(owner, status="pending")
    dataset(owner, status="rejected")  # does not count
    client.force_login(owner)

    response = upload(client)

    assert response.status_code == 200
    page = response.content.decode()
    assert "You have 2 datasets and the limit is 2 per user" in page
    assert "QUOTA_MAX_DATASETS" in page and "Delete one you no longer need" in page
    assert UserDataset.objects.count() == 3 and sent == []
    assert ha.tree(dataset_dirs[0]) == []  # the archive was not stored


def test_it_refuses_an_upload_beyond_the_total_size(client, owner, limits, sent):
    limits.QUOTA_MAX_DATASET_BYTES = 1000
    dataset(owner, uncompressed_bytes=900, upload_bytes=100)  # ready: its extracted size
    dataset(owner, status="rejected", uncompressed_bytes=10**6)  # does not count
    client.force_login(owner)

    response = upload(client, ARCHIVE + bytes(100))

    page = response.content.decode()
    assert response.status_code == 200 and "QUOTA_MAX_DATASET_BYTES" in page
    assert "Your datasets take 900 bytes" in page
    assert sent == []


def test_an_upload_within_the_quotas_is_stored(
    client, owner, limits, sent, django_capture_on_commit_callbacks
):
    limits.QUOTA_MAX_DATASETS = 2
    limits.QUOTA_MAX_DATASET_BYTES = 1000
    dataset(owner, uncompressed_bytes=500)
    client.force_login(owner)

    with django_capture_on_commit_callbacks(execute=True):
        response = upload(client)

    assert response.status_code == 302
    assert UserDataset.objects.filter(owner=owner).count() == 2 and len(sent) == 1


def test_staff_are_exempt(client, staff, limits, sent):
    limits.QUOTA_MAX_DATASETS = 1
    dataset(staff)
    client.force_login(staff)

    assert upload(client).status_code == 302


def test_the_upload_page_shows_the_usage(client, owner, limits):
    limits.QUOTA_MAX_DATASETS = 5
    limits.QUOTA_MAX_DATASET_BYTES = 2048
    dataset(owner, uncompressed_bytes=1024)
    client.force_login(owner)

    page = client.get(reverse("dataset-upload")).content.decode()

    assert "You use 1 of 5 datasets and 1 KiB of 2 KiB." in page


@pytest.fixture
def storing(monkeypatch):
    """Calls `on_store()` as the archive is stored; records whether a transaction was open."""
    storage = UserDataset._meta.get_field("upload").storage
    save = storage.save
    seen: dict = {"in_transaction": [], "on_store": lambda: None}

    def save_and_note(*args, **kwargs):
        seen["in_transaction"].append(connection.in_atomic_block)
        seen["on_store"]()
        return save(*args, **kwargs)

    monkeypatch.setattr(storage, "save", save_and_note)
    return seen


@pytest.mark.django_db(transaction=True)  # to see whether the view opened one
def test_the_archive_is_stored_outside_any_transaction(client, owner, limits, sent, storing):
    """Storing 200 MB in S3 can take minutes: no row lock or transaction is held meanwhile."""
    limits.QUOTA_MAX_DATASETS = 2
    client.force_login(owner)

    assert upload(client).status_code == 302
    assert storing["in_transaction"] == [False]
    assert UserDataset.objects.filter(owner=owner).count() == 1


def test_an_upload_that_a_concurrent_one_pushed_past_the_quota_leaves_nothing(
    client, owner, limits, sent, storing, dataset_dirs
):
    """Both pass the first check; the other is saved while this one's zip is stored: the check
    under the lock refuses this one, and its stored zip is deleted."""
    limits.QUOTA_MAX_DATASETS = 1
    storing["on_store"] = lambda: dataset(owner, status="pending")
    client.force_login(owner)

    response = upload(client)

    assert response.status_code == 200
    assert "You have 1 datasets and the limit is 1 per user" in response.content.decode()
    assert list(UserDataset.objects.values_list("name", flat=True)) == ["old"]  # the other
    assert [p for p in dataset_dirs[0].rglob("*") if p.is_file()] == [] and sent == []
