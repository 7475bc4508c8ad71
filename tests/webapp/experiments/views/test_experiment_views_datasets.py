"""The experiment form with uploaded datasets: the select offers only the datasets the user may
train on, a chosen one must fit the config (errors on the field at fault), clone carries it,
and the experiment and run pages name it (a private one only to whoever may see it)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from webapp.datasets.models import UserDataset
from webapp.experiments import services
from webapp.experiments.forms import ExperimentForm
from webapp.experiments.models import Experiment

NEW = reverse("experiment-new")


@pytest.fixture(autouse=True)
def datasets_root(settings, tmp_path):
    settings.DATASETS_ROOT = tmp_path / "datasets"


def form_data(**overrides) -> dict:
    """A valid imagefolder submission (no data needed on disk to validate it)."""
    data = {
        "name": "upload run",
        "description": "",
        "preset": "",
        "seeds": "0",
        "queue": "any",
        "dataset": "imagefolder",
        "model": "omniglot_conv",
        "image_size": "28",
        "augment_rotations": "false",
        "ways": "5",
        "shots": "1",
        "queries": "1",
        "train_shots": "5",
        "meta_iters": "3",
        "final_eval_tasks": "5",
        "validation_interval": "0",
    }
    data.update(overrides)
    return data


def errors(response) -> dict:
    return response.context["form"].errors


def choice_ids(form: ExperimentForm) -> set[int]:
    return {int(value.value) for value, _ in form.fields["user_dataset"].choices if value}


# --- the select ------------------------------------------------------------------------------


def test_the_select_offers_only_datasets_the_user_may_train_on(
    client, owner, stranger, make_ready_dataset
):
    mine = make_ready_dataset(owner, name="mine")
    make_ready_dataset(owner, name="mine-pending", status=UserDataset.Status.PENDING)
    shared = make_ready_dataset(stranger, name="shared", is_public=True)
    make_ready_dataset(stranger, name="their-private")
    make_ready_dataset(stranger, name="their-public-rejected", is_public=True, status="rejected")
    client.force_login(owner)

    response = client.get(NEW)

    form = response.context["form"]
    assert choice_ids(form) == {mine.pk, shared.pk}
    page = response.content.decode()
    assert 'id="id_user_dataset"' in page
    assert "their-private" not in page and "mine-pending" not in page
    # The label says what bounds a task: classes per split and images per class.
    label = dict(form.fields["user_dataset"].choices)[mine.pk]
    assert "mine" in label and "8/5/6 classes" in label and "up to 5-way" in label
    assert "10 images per class" in label


def test_the_select_sits_next_to_the_dataset_field(client, owner):
    client.force_login(owner)

    form = client.get(NEW).context["form"]

    task = dict(form.grouped_config_fields())["Task"]
    names = [bound.name for bound in task]
    assert names[names.index("dataset") + 1] == "user_dataset"
    assert form.fields["user_dataset"].help_text.startswith("For dataset imagefolder")


def test_a_form_without_a_user_offers_no_dataset(owner, make_ready_dataset):
    make_ready_dataset(owner, is_public=True)

    assert choice_ids(ExperimentForm()) == set()


# --- submitting -----------------------------------------------------------------------------


def test_choosing_a_ready_dataset_saves_it_on_the_experiment(client, owner, make_ready_dataset):
    dataset = make_ready_dataset(owner)
    client.force_login(owner)

    response = client.post(NEW, form_data(user_dataset=str(dataset.pk), seeds="1, 2"))

    assert response.status_code == 302, errors(response)
    experiment = Experiment.objects.get()
    assert experiment.user_dataset == dataset
    # No run names a server folder: each worker host uses its own cached copy.
    assert {r.config["data_dir"] for r in experiment.runs.all()} == {None}


def test_someone_elses_private_dataset_is_not_a_valid_choice(
    client, owner, stranger, make_ready_dataset
):
    private = make_ready_dataset(stranger)
    client.force_login(owner)

    response = client.post(NEW, form_data(user_dataset=str(private.pk)))

    assert response.status_code == 200
    assert "user_dataset" in errors(response)
    assert not Experiment.objects.exists()


@pytest.mark.parametrize("value", ["abc", "-1", "0", "9" * 30, "1.5", "\x00"])
def test_a_nonsense_dataset_value_is_a_field_error(client, owner, make_ready_dataset, value):
    make_ready_dataset(owner)
    client.force_login(owner)

    response = client.post(NEW, form_data(user_dataset=value))

    assert response.status_code == 200
    assert "user_dataset" in errors(response)
    assert not Experiment.objects.exists()


def test_a_dataset_with_another_dataset_kind_is_an_error_on_dataset(
    client, owner, make_ready_dataset
):
    dataset = make_ready_dataset(owner)
    client.force_login(owner)

    response = client.post(
        NEW, form_data(user_dataset=str(dataset.pk), dataset="omniglot", split="paper")
    )

    assert response.status_code == 200
    assert "imagefolder" in errors(response)["dataset"][0]
    assert not Experiment.objects.exists()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"ways": "6"}, "ways"),  # the val split has 5 classes
        ({"shots": "9", "queries": "2"}, "shots"),  # classes have 10 images
        ({"train_shots": "11"}, "train_shots"),
    ],
)
def test_a_task_the_dataset_cannot_serve_is_an_error_on_its_field(
    client, owner, make_ready_dataset, overrides, field
):
    dataset = make_ready_dataset(owner)
    client.force_login(owner)

    response = client.post(NEW, form_data(user_dataset=str(dataset.pk), **overrides))

    assert response.status_code == 200
    assert list(errors(response)) == [field]
    assert "birds" in errors(response)[field][0]
    assert not Experiment.objects.exists()


def test_without_a_dataset_imagefolder_uses_the_servers_default(client, owner):
    client.force_login(owner)

    response = client.post(NEW, form_data())

    assert response.status_code == 302, errors(response)
    experiment = Experiment.objects.get()
    assert experiment.user_dataset is None
    assert experiment.runs.get().config["data_dir"] is None


def test_a_refusal_at_save_time_lands_on_the_dataset_field(
    client, owner, make_ready_dataset, monkeypatch
):
    """The dataset can change between the form's check and the save (deleted, made private):
    the service's refusal is shown on the select, not as a crash."""
    dataset = make_ready_dataset(owner)

    def refuse(*args, **kwargs):
        raise services.ServiceError("No longer usable.", field="user_dataset")

    monkeypatch.setattr(services, "create_experiment", refuse)
    client.force_login(owner)

    response = client.post(NEW, form_data(user_dataset=str(dataset.pk)))

    assert response.status_code == 200
    assert errors(response)["user_dataset"] == ["No longer usable."]


# --- clone ------------------------------------------------------------------------------------


def test_clone_carries_the_dataset(client, owner, make_ready_dataset):
    dataset = make_ready_dataset(owner)
    source = services.create_experiment(
        owner,
        name="src",
        config={k: v for k, v in form_data().items() if k in ("dataset", "model")},
        seeds=[0],
        user_dataset=dataset.pk,
    )
    client.force_login(owner)
    url = reverse("experiment-clone", args=[source.pk])

    form = client.get(url).context["form"]
    assert form.initial["user_dataset"] == dataset.pk
    data = {
        name: ("" if value is None else value)
        for name, value in form.initial.items()
        if name in form.fields
    }
    data.update(train_shots="5", meta_iters="3", final_eval_tasks="5")

    response = client.post(url, {k: str(v) for k, v in data.items()})

    assert response.status_code == 302, errors(response)
    copy = Experiment.objects.get(cloned_from=source)
    assert copy.user_dataset == dataset
    assert copy.runs.get().config["data_dir"] is None


def test_cloning_onto_a_dataset_you_cannot_use_warns(client, owner, stranger, make_ready_dataset):
    dataset = make_ready_dataset(owner)  # private: the stranger may not train on it
    source = services.create_experiment(
        owner,
        name="src",
        config={"dataset": "imagefolder", "train_shots": 5},
        seeds=[0],
        user_dataset=dataset.pk,
    )
    client.force_login(stranger)

    response = client.get(reverse("experiment-clone", args=[source.pk]))

    assert response.status_code == 200
    assert "trained on an uploaded dataset you cannot use" in response.content.decode()
    assert choice_ids(response.context["form"]) == set()


# --- the pages name the dataset ----------------------------------------------------------------


@pytest.fixture
def experiment_on(owner, make_ready_dataset):
    def make(**dataset_fields) -> Experiment:
        dataset = make_ready_dataset(owner, name="birds-of-paradise", **dataset_fields)
        return services.create_experiment(
            owner,
            name="on birds",
            config={"dataset": "imagefolder", "train_shots": 5},
            seeds=[0],
            user_dataset=dataset.pk,
        )

    return make


@pytest.mark.parametrize("page", ["experiment", "run"])
def test_the_pages_name_and_link_the_dataset(client, owner, experiment_on, page):
    experiment = experiment_on()
    target = experiment if page == "experiment" else experiment.runs.get()
    client.force_login(owner)

    html = client.get(target.get_absolute_url()).content.decode()

    link = reverse("dataset-detail", args=[experiment.user_dataset_id])
    assert f'<a href="{link}">birds-of-paradise</a>' in html


@pytest.mark.parametrize("page", ["experiment", "run"])
def test_a_private_datasets_name_is_not_shown_to_others(client, stranger, experiment_on, page):
    experiment = experiment_on()
    target = experiment if page == "experiment" else experiment.runs.get()
    client.force_login(stranger)

    html = client.get(target.get_absolute_url()).content.decode()

    assert "birds-of-paradise" not in html
    assert f"a private dataset (#{experiment.user_dataset_id})" in html


def test_a_public_datasets_name_is_shown_to_everyone(client, stranger, experiment_on):
    experiment = experiment_on(is_public=True)
    client.force_login(stranger)

    html = client.get(experiment.get_absolute_url()).content.decode()

    assert "birds-of-paradise" in html


def test_an_experiment_without_an_upload_shows_no_dataset_row(client, owner, make_experiment):
    experiment = make_experiment(owner)
    client.force_login(owner)

    html = client.get(experiment.get_absolute_url()).content.decode()

    assert "Uploaded dataset" not in html
