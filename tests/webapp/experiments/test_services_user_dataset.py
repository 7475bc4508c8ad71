"""create_experiment on an uploaded dataset: only one the owner may train on (ready, theirs or
public), only with dataset="imagefolder", only tasks its class and image counts can serve; no
run's config names a folder (each worker host uses its own cached copy), and the dataset's
content is part of the runs' config hash. A dataset with experiments is not
deleted. And one whole path in this process: a good zip processed to ready, an experiment on
it, a run trained to succeeded."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from django.core.files import File
from django.urls import reverse

from webapp.datasets import services as dataset_services
from webapp.datasets.models import UserDataset
from webapp.datasets.tasks import process_dataset
from webapp.experiments import services
from webapp.experiments.models import Experiment, Run
from webapp.experiments.services import ServiceError
from webapp.experiments.tasks import train_run

# A quick imagefolder config: small images, the small network, few iterations.
IMAGEFOLDER = {
    "dataset": "imagefolder",
    "model": "omniglot_conv",
    "image_size": 28,
    "augment_rotations": False,
    "ways": 5,
    "shots": 1,
    "queries": 1,
    "train_shots": 5,
    "meta_iters": 3,
    "final_eval_tasks": 5,
    "validation_interval": 0,
}


def _hostile_archives():
    """The archive generator of the dataset tests (registered by their conftest, which is not
    loaded when only these tests run)."""
    if "hostile_archives" not in sys.modules:
        path = Path(__file__).parents[1] / "datasets" / "hostile_archives.py"
        spec = importlib.util.spec_from_file_location("hostile_archives", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["hostile_archives"] = module
        spec.loader.exec_module(module)
    return sys.modules["hostile_archives"]


@pytest.fixture(autouse=True)
def datasets_root(settings, tmp_path) -> Path:
    settings.DATASETS_ROOT = tmp_path / "datasets"
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.DATASETS_ROOT


@pytest.fixture
def make_dataset(db):
    """A dataset row as the worker leaves it (no folder needed: the service trusts the counts
    the worker recorded). Ready, private, 5/5/5 classes of at least 10 images by default."""

    def make(owner, **fields) -> UserDataset:
        values = {
            "name": "birds",
            "status": UserDataset.Status.READY,
            "layout": "splits",
            "train_classes": 5,
            "val_classes": 5,
            "test_classes": 5,
            "images": 150,
            "min_class_images": 10,
            **fields,
        }
        return UserDataset.objects.create(owner=owner, **values)

    return make


def create(owner, config=None, seeds=(0,), **kw) -> Experiment:
    return services.create_experiment(
        owner, name="on upload", config=dict(config or IMAGEFOLDER), seeds=list(seeds), **kw
    )


def nothing_saved() -> bool:
    return not Experiment.objects.exists() and not Run.objects.exists()


# --- usable datasets --------------------------------------------------------------------------


@pytest.mark.parametrize("as_id", [True, False], ids=["id", "instance"])
def test_a_ready_dataset_of_the_owner_is_every_runs_dataset(owner, make_dataset, as_id):
    dataset = make_dataset(owner)

    experiment = create(owner, seeds=(1, 2), user_dataset=dataset.pk if as_id else dataset)

    assert experiment.user_dataset == dataset
    runs = list(experiment.runs.order_by("seed"))
    assert [r.seed for r in runs] == [1, 2]
    # No server path in any config: a worker host resolves the dataset to its own cache.
    assert {r.config["data_dir"] for r in runs} == {None}
    assert {r.dataset for r in runs} == {"imagefolder"}
    assert experiment.config["data_dir"] is None
    # The dataset service now finds those queued runs (it refuses to delete under them).
    assert set(dataset_services.runs_using(dataset)) == set(runs)


def test_runs_on_different_uploads_never_share_a_config_hash(owner, make_dataset):
    first, second = make_dataset(owner, name="a"), make_dataset(owner, name="b")
    UserDataset.objects.filter(pk=first.pk).update(content_hash="a" * 64)
    UserDataset.objects.filter(pk=second.pk).update(content_hash="b" * 64)
    first.refresh_from_db()
    second.refresh_from_db()
    on_first = create(owner, user_dataset=first.pk).runs.get()
    on_second = create(owner, user_dataset=second.pk).runs.get()
    assert on_first.config == on_second.config
    assert on_first.config_hash != on_second.config_hash


def test_someone_elses_public_ready_dataset_may_be_used(owner, stranger, make_dataset):
    dataset = make_dataset(stranger, is_public=True)

    experiment = create(owner, user_dataset=dataset.pk)

    assert experiment.user_dataset == dataset
    assert experiment.runs.get().config["data_dir"] is None


def test_staff_may_train_on_any_ready_dataset(staff, stranger, make_dataset):
    dataset = make_dataset(stranger)

    assert create(staff, user_dataset=dataset.pk).user_dataset == dataset


def test_someone_elses_private_dataset_is_refused_and_nothing_is_saved(
    owner, stranger, make_dataset
):
    dataset = make_dataset(stranger, name="secret-name")

    with pytest.raises(ServiceError) as err:
        create(owner, user_dataset=dataset.pk)

    assert err.value.field == "user_dataset"
    assert "secret-name" not in str(err.value)  # nothing about a dataset they may not see
    assert nothing_saved()


def test_a_private_dataset_is_refused_exactly_like_one_that_does_not_exist(
    owner, stranger, make_dataset
):
    private = make_dataset(stranger)
    missing = private.pk + 1000

    with pytest.raises(ServiceError) as hidden:
        create(owner, user_dataset=private.pk)
    with pytest.raises(ServiceError) as absent:
        create(owner, user_dataset=missing)

    assert str(hidden.value).replace(str(private.pk), "N") == str(absent.value).replace(
        str(missing), "N"
    )


@pytest.mark.parametrize("status", ["pending", "validating", "rejected"])
def test_an_own_dataset_that_is_not_ready_is_refused(owner, make_dataset, status):
    dataset = make_dataset(owner, status=status)

    with pytest.raises(ServiceError) as err:
        create(owner, user_dataset=dataset.pk)

    assert err.value.field == "user_dataset"
    assert status in str(err.value) and "not ready" in str(err.value)
    assert nothing_saved()


@pytest.mark.parametrize("status", ["pending", "rejected"])
def test_someone_elses_public_dataset_that_is_not_ready_is_refused(
    owner, stranger, make_dataset, status
):
    dataset = make_dataset(stranger, is_public=True, status=status)

    with pytest.raises(ServiceError) as err:
        create(owner, user_dataset=dataset.pk)

    assert err.value.field == "user_dataset"
    assert nothing_saved()


@pytest.mark.parametrize("bad", [0, -1, 2**63, True, "1", 1.0])
def test_an_id_that_is_not_a_valid_whole_number_is_refused(owner, make_dataset, bad):
    make_dataset(owner)  # id 1 exists and is usable: only the type or range can be wrong

    with pytest.raises(ServiceError) as err:
        create(owner, user_dataset=bad)

    assert err.value.field == "user_dataset"
    assert nothing_saved()


# --- the config must fit the dataset -----------------------------------------------------------


@pytest.mark.parametrize("dataset_kind", ["omniglot", "sine"])
def test_an_uploaded_dataset_needs_dataset_imagefolder(owner, make_dataset, dataset_kind):
    dataset = make_dataset(owner)
    config = {"dataset": dataset_kind, "meta_iters": 3}
    if dataset_kind == "sine":
        config["model"] = "sine_mlp"

    with pytest.raises(ServiceError) as err:
        create(owner, config=config, user_dataset=dataset.pk)

    assert err.value.field == "dataset"
    assert "imagefolder" in str(err.value)
    assert nothing_saved()


def test_ways_above_the_smallest_splits_class_count_is_refused(owner, make_dataset):
    dataset = make_dataset(owner, train_classes=20, val_classes=4, test_classes=6)

    with pytest.raises(ServiceError) as err:
        create(owner, config={**IMAGEFOLDER, "ways": 5}, user_dataset=dataset.pk)

    assert err.value.field == "ways"
    assert "4 classes in its val split" in str(err.value)
    assert nothing_saved()
    # The boundary: as many ways as the smallest split has classes is fine.
    assert create(owner, config={**IMAGEFOLDER, "ways": 4}, user_dataset=dataset.pk)


def test_more_shots_and_queries_than_the_smallest_class_holds_is_refused(owner, make_dataset):
    dataset = make_dataset(owner, min_class_images=6)

    with pytest.raises(ServiceError) as err:
        create(owner, config={**IMAGEFOLDER, "shots": 5, "queries": 2}, user_dataset=dataset.pk)

    assert err.value.field == "shots"
    assert "only 6 images" in str(err.value) and "5 + 2 = 7" in str(err.value)
    assert nothing_saved()
    assert create(owner, config={**IMAGEFOLDER, "shots": 5, "queries": 1}, user_dataset=dataset.pk)


@pytest.mark.parametrize(
    ("algorithm", "train_shots", "tail", "fits"),
    [
        ("reptile", 7, 5, False),
        ("reptile", 6, 5, True),
        ("fomaml", 3, 4, False),  # FOMAML draws its tail too: 3 + 4 > 6
        ("fomaml", 3, 3, True),
    ],
)
def test_training_tasks_must_fit_the_smallest_class_too(
    owner, make_dataset, algorithm, train_shots, tail, fits
):
    dataset = make_dataset(owner, min_class_images=6)
    config = {
        **IMAGEFOLDER,
        "algorithm": algorithm,
        "train_shots": train_shots,
        "fomaml_tail_shots": tail,
    }

    if fits:
        assert create(owner, config=config, user_dataset=dataset.pk)
        return
    with pytest.raises(ServiceError) as err:
        create(owner, config=config, user_dataset=dataset.pk)
    assert err.value.field == "train_shots"
    assert nothing_saved()


def test_a_typed_data_dir_is_still_refused_with_a_dataset(owner, make_dataset):
    dataset = make_dataset(owner)

    with pytest.raises(ServiceError) as err:
        create(owner, config={**IMAGEFOLDER, "data_dir": "/etc"}, user_dataset=dataset.pk)

    assert err.value.field == "data_dir"
    assert nothing_saved()


def test_imagefolder_without_a_dataset_keeps_the_servers_default_folder(owner):
    experiment = create(owner)

    assert experiment.user_dataset is None
    assert experiment.runs.get().config["data_dir"] is None  # $METATRAIN_DATA/miniimagenet


# --- deleting a dataset that experiments were made on ------------------------------------------


def test_a_dataset_with_a_finished_experiment_is_not_deleted(owner, make_dataset):
    dataset = make_dataset(owner)
    experiment = create(owner, user_dataset=dataset.pk)
    experiment.runs.update(status=Run.Status.SUCCEEDED)  # no active run: only the FK holds it

    with pytest.raises(dataset_services.DatasetError) as err:
        dataset_services.delete_dataset(dataset)

    assert "1 experiment was made on this dataset" in str(err.value)
    assert UserDataset.objects.filter(pk=dataset.pk).exists()
    # Once the experiment is gone, so can the dataset be.
    services.delete_experiment(experiment)
    dataset_services.delete_dataset(dataset)
    assert not UserDataset.objects.filter(pk=dataset.pk).exists()


def test_an_experiment_made_after_the_check_is_still_caught(owner, make_dataset, monkeypatch):
    """The database's PROTECT is the last word: a ProtectedError becomes the same message."""
    dataset = make_dataset(owner)
    create(owner, user_dataset=dataset.pk).runs.update(status=Run.Status.FAILED)
    monkeypatch.setattr(dataset_services, "experiments_using", lambda d: 0)

    with pytest.raises(dataset_services.DatasetError) as err:
        dataset_services.delete_dataset(dataset)

    assert "1 experiment was made on this dataset" in str(err.value)
    assert UserDataset.objects.filter(pk=dataset.pk).exists()


def test_the_delete_page_says_why_instead_of_failing(client, owner, make_dataset):
    dataset = make_dataset(owner)
    create(owner, user_dataset=dataset.pk).runs.update(status=Run.Status.CANCELLED)
    client.force_login(owner)

    response = client.post(reverse("dataset-delete", args=[dataset.pk]), follow=True)

    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == dataset.get_absolute_url()
    assert "1 experiment was made on this dataset" in response.content.decode()
    assert UserDataset.objects.filter(pk=dataset.pk).exists()


def test_a_dataset_with_an_active_run_names_the_run_first(owner, make_dataset):
    dataset = make_dataset(owner)
    create(owner, user_dataset=dataset.pk)  # its run is queued

    with pytest.raises(dataset_services.DatasetError, match="1 run that has not finished"):
        dataset_services.delete_dataset(dataset)


# --- the whole path, in this process ---------------------------------------------------------


@pytest.mark.slow  # processing a zip and training a tiny network: a few seconds
@pytest.mark.usefixtures("one_torch_thread", "work_dirs", "broker_down")
def test_a_processed_upload_trains_a_run_to_succeeded(owner, tmp_path, settings):
    ha = _hostile_archives()
    archives = tmp_path / "archives"
    archives.mkdir()
    archive = ha.good_split_archive(archives)  # 5 classes per split, 5 images per class
    dataset = UserDataset(
        owner=owner,
        name="tiny upload",
        upload_name=archive.name,
        upload_bytes=archive.stat().st_size,
    )
    with archive.open("rb") as fh:
        dataset.upload.save(archive.name, File(fh), save=True)

    assert process_dataset(dataset.pk) == "ready"
    dataset.refresh_from_db()
    assert (dataset.test_classes, dataset.min_class_images) == (5, 5)

    config = {
        **IMAGEFOLDER,
        "ways": 3,
        "train_shots": 3,
        "inner_iters": 2,
        "eval_inner_iters": 3,
        "checkpoint_interval": 3,
    }
    experiment = create(owner, config=config, seeds=(7,), user_dataset=dataset.pk)
    run = experiment.runs.get()

    assert train_run(run.pk) == Run.Status.SUCCEEDED

    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    assert (run.iteration, run.total_iterations) == (3, 3)
    assert run.test_tasks == 5 and 0.0 <= run.test_accuracy <= 1.0
    assert run.config["data_dir"] is None
    assert (settings.DATASET_CACHE_ROOT / dataset.content_hash / "test").is_dir()
    # The config.json users download names no folder of the worker host.
    with run.config_file.open("rb") as fh:
        document = json.loads(fh.read())
    assert document["config"]["data_dir"] is None
    assert str(settings.DATASET_CACHE_ROOT) not in json.dumps(document)
    assert run.initialization.name.endswith("initialization.safetensors")
