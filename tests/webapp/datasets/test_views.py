"""The dataset pages: uploads store a zip and enqueue it (nothing else), oversize uploads are
refused in the request, only owners and staff delete, strangers see only what is shared."""

from __future__ import annotations

import hostile_archives as ha
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from webapp.datasets.models import UserDataset, dataset_folder
from webapp.datasets.services import PROCESS_TASK
from webapp.datasets.views import FORM_OVERHEAD_BYTES
from webapp.experiments.models import Experiment

pytestmark = pytest.mark.usefixtures("dataset_dirs")


def post_upload(client: Client, content: bytes, name: str = "cats.zip", **fields):
    data = {"name": "my cats", "split_seed": "0", **fields}
    data["archive"] = SimpleUploadedFile(name, content, content_type="application/zip")
    return client.post(reverse("dataset-upload"), data)


@pytest.fixture
def make_dataset(db):
    def make(owner, **fields) -> UserDataset:
        fields.setdefault("name", "set")
        return UserDataset.objects.create(owner=owner, **fields)

    return make


def ready(**fields) -> dict:
    return {"status": UserDataset.Status.READY, "train_classes": 5, "images": 75, **fields}


# ------------------------------------------------------------------------------------------
# Login
# ------------------------------------------------------------------------------------------
def test_it_sends_anonymous_users_to_login(client, make_dataset, owner):
    dataset = make_dataset(owner, **ready(is_public=True))
    for url in (
        reverse("dataset-list"),
        reverse("dataset-upload"),
        reverse("dataset-detail", args=[dataset.pk]),
    ):
        response = client.get(url)
        assert response.status_code == 302
        assert response.url.startswith(reverse("login"))


def test_it_stores_nothing_for_an_anonymous_upload(client, db, dataset_dirs, sent):
    response = post_upload(client, b"PK\x05\x06" + bytes(18))
    assert response.status_code == 302 and response.url.startswith(reverse("login"))
    assert not UserDataset.objects.exists()
    assert ha.tree(dataset_dirs[0]) == [] and sent == []


# ------------------------------------------------------------------------------------------
# Upload
# ------------------------------------------------------------------------------------------
def test_an_upload_creates_one_pending_dataset_and_nothing_else(
    client, owner, dataset_dirs, sent, tmp_path, django_capture_on_commit_callbacks
):
    media, datasets_root = dataset_dirs
    archive = ha.good_split_archive(tmp_path).read_bytes()
    client.force_login(owner)

    with django_capture_on_commit_callbacks(execute=True):
        response = post_upload(client, archive, is_public="on")

    dataset = UserDataset.objects.get()
    assert response.status_code == 302 and response.url == dataset.get_absolute_url()
    assert (dataset.owner, dataset.name, dataset.status) == (owner, "my cats", "pending")
    assert (dataset.upload_name, dataset.upload_bytes, dataset.is_public) == (
        "cats.zip",
        len(archive),
        True,
    )
    # Only the zip, under a random name, byte for byte; nothing extracted in the request.
    stored = ha.tree(media)
    assert stored == ["dataset-uploads", dataset.upload.name]
    assert dataset.upload.name.startswith("dataset-uploads/") and "cats" not in dataset.upload.name
    assert (media / dataset.upload.name).read_bytes() == archive
    assert ha.tree(datasets_root) == []  # nothing is extracted in the request
    assert sent == [(PROCESS_TASK, [dataset.pk], "default")]


def test_it_refuses_an_oversize_upload_by_its_content_length(client, owner, settings, sent):
    settings.DATASET_MAX_UPLOAD_BYTES = 1000
    client.force_login(owner)
    response = post_upload(client, bytes(FORM_OVERHEAD_BYTES + 2000))
    assert response.status_code == 413
    assert "larger than the 1,000 bytes limit" in response.content.decode()
    assert not UserDataset.objects.exists() and sent == []


def test_it_stops_an_oversize_file_that_fits_the_content_length_allowance(
    client, owner, settings, dataset_dirs, sent
):
    settings.DATASET_MAX_UPLOAD_BYTES = 10_000
    client.force_login(owner)
    response = post_upload(client, bytes(12_000))  # body < limit + overhead: the handler stops it
    assert response.status_code == 413
    assert not UserDataset.objects.exists()
    assert ha.tree(dataset_dirs[0]) == [] and sent == []


def test_it_asks_for_a_zip_file(client, owner, dataset_dirs, sent):
    client.force_login(owner)
    response = post_upload(client, b"data", name="cats.tar")
    assert response.status_code == 200
    assert "Upload a .zip file." in response.content.decode()
    assert not UserDataset.objects.exists() and ha.tree(dataset_dirs[0]) == []


def test_the_upload_still_checks_the_csrf_token(owner, dataset_dirs):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    response = post_upload(client, b"PK\x05\x06" + bytes(18))
    assert response.status_code == 403
    assert not UserDataset.objects.exists() and ha.tree(dataset_dirs[0]) == []


def test_the_upload_page_shows_the_limits(client, owner):
    client.force_login(owner)
    page = client.get(reverse("dataset-upload")).content.decode()
    assert "At most 200 MiB" in page and 'enctype="multipart/form-data"' in page


# ------------------------------------------------------------------------------------------
# Who sees what
# ------------------------------------------------------------------------------------------
def test_the_list_shows_my_datasets_and_others_public_ready_ones(
    client, owner, stranger, make_dataset
):
    make_dataset(owner, name="mine-pending")
    make_dataset(stranger, name="theirs-public", **ready(is_public=True))
    make_dataset(stranger, name="theirs-private", **ready())
    make_dataset(stranger, name="theirs-public-pending", is_public=True)
    client.force_login(owner)
    page = client.get(reverse("dataset-list")).content.decode()
    assert "mine-pending" in page and "theirs-public<" in page
    assert "theirs-private" not in page and "theirs-public-pending" not in page


def test_a_stranger_sees_a_public_ready_dataset_but_not_a_private_or_unready_one(
    client, owner, stranger, make_dataset
):
    public = make_dataset(owner, **ready(is_public=True))
    private = make_dataset(owner, **ready())
    unready = make_dataset(owner, is_public=True, status=UserDataset.Status.VALIDATING)
    client.force_login(stranger)
    assert client.get(reverse("dataset-detail", args=[public.pk])).status_code == 200
    assert client.get(reverse("dataset-detail", args=[private.pk])).status_code == 404
    assert client.get(reverse("dataset-detail", args=[unready.pk])).status_code == 404


def test_the_detail_page_shows_a_rejection_reason_to_the_owner(client, owner, make_dataset):
    dataset = make_dataset(
        owner,
        status=UserDataset.Status.REJECTED,
        reason="'../evil.png' points outside the archive's folder ('..'); refused.",
    )
    client.force_login(owner)
    page = client.get(dataset.get_absolute_url()).content.decode()
    assert "Rejected." in page and "&#x27;../evil.png&#x27; points outside" in page
    assert reverse("dataset-delete", args=[dataset.pk]) in page


# ------------------------------------------------------------------------------------------
# Delete
# ------------------------------------------------------------------------------------------
def test_a_stranger_cannot_delete_a_dataset(client, owner, stranger, make_dataset):
    for dataset in (make_dataset(owner), make_dataset(owner, **ready(is_public=True))):
        client.force_login(stranger)
        response = client.post(reverse("dataset-delete", args=[dataset.pk]))
        assert response.status_code == 403
        assert UserDataset.objects.filter(pk=dataset.pk).exists()


def test_the_owner_deletes_a_dataset_with_its_folder(
    client, owner, make_dataset, django_capture_on_commit_callbacks
):
    dataset = make_dataset(owner, **ready())
    folder = dataset_folder(dataset.pk)
    (folder / "train" / "c0").mkdir(parents=True)
    (folder / "train" / "c0" / "a.png").write_bytes(ha.png_bytes())
    client.force_login(owner)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("dataset-delete", args=[dataset.pk]))
    assert response.status_code == 302 and response.url == reverse("dataset-list")
    assert not UserDataset.objects.filter(pk=dataset.pk).exists()
    assert not folder.exists()


def test_staff_can_delete_anyones_dataset(client, owner, staff, make_dataset):
    dataset = make_dataset(owner)
    client.force_login(staff)
    assert client.post(reverse("dataset-delete", args=[dataset.pk])).status_code == 302
    assert not UserDataset.objects.filter(pk=dataset.pk).exists()


def test_delete_needs_post_and_a_csrf_token(owner, make_dataset):
    dataset = make_dataset(owner)
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    url = reverse("dataset-delete", args=[dataset.pk])
    assert client.get(url).status_code == 405
    assert client.post(url).status_code == 403
    assert UserDataset.objects.filter(pk=dataset.pk).exists()


def test_it_refuses_to_delete_a_dataset_an_unfinished_run_trains_on(
    client, owner, make_dataset, make_run
):
    dataset = make_dataset(owner, **ready())
    experiment = Experiment.objects.create(
        owner=owner, name="on it", config={"dataset": "imagefolder"}, user_dataset=dataset
    )
    make_run(owner, experiment=experiment, status="running", dataset="imagefolder")
    client.force_login(owner)
    response = client.post(reverse("dataset-delete", args=[dataset.pk]), follow=True)
    assert UserDataset.objects.filter(pk=dataset.pk).exists()
    assert "1 run that has not finished use" in response.content.decode()
