"""Server paths stay private: no page and no API answer shows a config's `data_dir` (the folder
of an uploaded dataset, another user's private one included); the dataset is named instead, to
whoever may see it. Runs stored with or without data_dir are shown alike."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from metatrain import Config
from webapp.accounts.models import ApiToken
from webapp.datasets.models import dataset_folder
from webapp.experiments import services

ON_UPLOAD = {
    "dataset": "imagefolder",
    "model": "omniglot_conv",
    "image_size": 28,
    "augment_rotations": False,
    "train_shots": 5,
    "meta_iters": 3,
    "final_eval_tasks": 5,
    "validation_interval": 0,
}


@pytest.fixture
def private_run(owner, make_ready_dataset):
    dataset = make_ready_dataset(owner, name="secret birds")
    experiment = services.create_experiment(
        owner, name="on upload", config=dict(ON_UPLOAD), seeds=[0], user_dataset=dataset.pk
    )
    run = experiment.runs.get()
    folder = str(dataset_folder(dataset.pk))
    # Runs stored before datasets were cached per host name the server folder in their config:
    # the hardest case for the outputs, so the fixture stores one that way.
    run.config = {**run.config, "data_dir": folder}
    run.save(update_fields=["config"])
    return run, dataset, folder


def api_as(user) -> Client:
    return Client(headers={"Authorization": f"Bearer {ApiToken.issue(user, 'paths')[1]}"})


def page_as(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def api_answers(client: Client, run) -> dict[str, str]:
    urls = [
        f"/api/runs/{run.pk}",
        f"/api/runs/{run.pk}/config",
        "/api/runs",
        f"/api/experiments/{run.experiment_id}",
        "/api/experiments",
        "/api/presets",
    ]
    answers = {}
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, (url, response.content)
        answers[url] = response.content.decode()
    return answers


@pytest.mark.parametrize("who", ["owner", "stranger"])
def test_no_api_answer_shows_a_server_path(request, private_run, settings, who):
    run, _, folder = private_run

    for url, body in api_answers(api_as(request.getfixturevalue(who)), run).items():
        assert folder not in body, url  # ...and never shown
        assert str(settings.DATASETS_ROOT) not in body, url
        assert "data_dir" not in body, url


def test_the_api_names_the_dataset_to_its_owner_and_hides_a_private_name(
    private_run, owner, stranger
):
    run, dataset, _ = private_run

    mine = api_as(owner).get(f"/api/runs/{run.pk}").json()
    theirs = api_as(stranger).get(f"/api/runs/{run.pk}").json()
    experiment = api_as(stranger).get(f"/api/experiments/{run.experiment_id}").json()

    assert (mine["user_dataset"], mine["user_dataset_name"]) == (dataset.pk, "secret birds")
    assert (theirs["user_dataset"], theirs["user_dataset_name"]) == (dataset.pk, None)
    assert (experiment["user_dataset"], experiment["user_dataset_name"]) == (dataset.pk, None)
    assert "secret birds" not in api_as(stranger).get("/api/runs").content.decode()


def test_the_config_answer_still_rebuilds_the_same_config_apart_from_its_folder(private_run):
    run, _, _ = private_run

    body = api_as(run.experiment.owner).get(f"/api/runs/{run.pk}/config").json()

    assert Config.from_dict(body) == Config.from_dict(run.config).replace(data_dir=None)


@pytest.mark.parametrize("who", ["owner", "stranger"])
def test_no_page_shows_a_server_path(request, private_run, settings, who):
    run, dataset, folder = private_run
    client = page_as(request.getfixturevalue(who))
    urls = [
        run.get_absolute_url(),
        run.experiment.get_absolute_url(),
        f"{reverse('compare')}?runs={run.pk}",
        reverse("experiment-clone", args=[run.experiment_id]),
    ]

    for url in urls:
        body = client.get(url).content.decode()
        assert folder not in body and str(settings.DATASETS_ROOT) not in body, url
        assert ">data_dir<" not in body, url
    named = "secret birds" in client.get(run.get_absolute_url()).content.decode()
    assert named is (who == "owner")


def test_the_compare_page_names_each_runs_uploaded_dataset(private_run, stranger, make_run):
    run, dataset, _ = private_run
    other = make_run(stranger)

    body = page_as(stranger).get(f"{reverse('compare')}?runs={run.pk},{other.pk}")

    rows = {row["key"]: row for row in body.context["diff_rows"]}
    assert rows["uploaded dataset"]["values"] == [f"a private dataset (#{dataset.pk})", "none"]
    assert rows["uploaded dataset"]["differs"] is True
    assert "data_dir" not in rows


def test_a_run_stored_without_data_dir_is_shown_the_same_way(private_run, owner):
    """Runs whose worker resolves the dataset per host carry no data_dir at all."""
    run, dataset, _ = private_run
    run.config = {k: v for k, v in run.config.items() if k != "data_dir"}
    run.save(update_fields=["config"])

    body = api_as(owner).get(f"/api/runs/{run.pk}").json()
    page = page_as(owner).get(run.get_absolute_url())

    assert body["user_dataset_name"] == "secret birds" and "data_dir" not in body["config"]
    assert page.status_code == 200 and "secret birds" in page.content.decode()
