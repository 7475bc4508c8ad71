"""GET /api/datasets and /api/datasets/{id}: API users find the ids of the datasets they may
train on; POST /api/experiments with `user_dataset` trains on one, through the same service as
the form (422 naming `user_dataset` when it is not theirs to use)."""

from __future__ import annotations

import pytest

from webapp.datasets.models import UserDataset, dataset_folder
from webapp.experiments.models import Experiment, Run

URL = "/api/datasets"
EXPERIMENTS = "/api/experiments"
# An imagefolder experiment small enough for any valid dataset below.
ON_UPLOAD = {
    "name": "on an upload",
    "overrides": {
        "dataset": "imagefolder",
        "model": "omniglot_conv",
        "image_size": 28,
        "train_shots": 5,
        "meta_iters": 3,
        "final_eval_tasks": 5,
        "validation_interval": 0,
    },
    "seeds": [0, 1],
}


@pytest.fixture(autouse=True)
def datasets_root(settings, tmp_path):
    settings.DATASETS_ROOT = tmp_path / "datasets"


def errors(response) -> dict[str, str]:
    assert response.status_code == 422, response.content
    return {e["field"]: e["message"] for e in response.json()["detail"]}


# --- GET /api/datasets ------------------------------------------------------------------------


def test_the_list_holds_the_ready_datasets_the_caller_may_use(
    api, owner, stranger, make_ready_dataset
):
    mine = make_ready_dataset(owner, name="mine")
    make_ready_dataset(owner, name="mine-pending", status=UserDataset.Status.PENDING)
    shared = make_ready_dataset(stranger, name="shared", is_public=True)
    make_ready_dataset(stranger, name="their-private")
    make_ready_dataset(stranger, name="their-public-pending", is_public=True, status="pending")

    response = api.get(URL)

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert [d["id"] for d in body["items"]] == [shared.pk, mine.pk]  # newest first
    item = {d["id"]: d for d in body["items"]}[mine.pk]
    assert item["owner"] == "owner" and item["status"] == "ready" and item["usable"] is True
    assert (item["train_classes"], item["val_classes"], item["test_classes"]) == (8, 5, 6)
    assert item["max_ways"] == 5 and item["min_class_images"] == 10
    assert item["can_change"] is True
    assert {d["id"]: d for d in body["items"]}[shared.pk]["can_change"] is False


def test_staff_list_every_ready_dataset(staff_api, owner, make_ready_dataset):
    private = make_ready_dataset(owner)
    make_ready_dataset(owner, status=UserDataset.Status.REJECTED)

    body = staff_api.get(URL).json()

    assert [d["id"] for d in body["items"]] == [private.pk]


def test_the_list_pages_with_limit_and_offset(api, owner, make_ready_dataset):
    ids = [make_ready_dataset(owner, name=f"d{i}").pk for i in range(3)]

    body = api.get(URL, {"limit": 1, "offset": 1}).json()

    assert (body["count"], body["limit"], body["offset"]) == (3, 1, 1)
    assert [d["id"] for d in body["items"]] == [ids[1]]


@pytest.mark.parametrize("query", [{"limit": 0}, {"limit": 10_000}, {"offset": -1}])
def test_out_of_range_paging_is_a_422(api, query):
    assert api.get(URL, query).status_code == 422


# --- GET /api/datasets/{id} -------------------------------------------------------------------


def test_the_owner_sees_their_dataset_in_any_state(api, owner, make_ready_dataset):
    dataset = make_ready_dataset(owner, status=UserDataset.Status.REJECTED, reason="no images")

    response = api.get(f"{URL}/{dataset.pk}")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "rejected" and body["usable"] is False
    assert body["reason"] == "no images"


def test_a_public_ready_dataset_is_visible_to_others(stranger_api, owner, make_ready_dataset):
    dataset = make_ready_dataset(owner, is_public=True)

    response = stranger_api.get(f"{URL}/{dataset.pk}")

    assert response.status_code == 200
    assert response.json()["can_change"] is False


@pytest.mark.parametrize(
    "fields", [{}, {"is_public": True, "status": "pending"}], ids=["private", "public-pending"]
)
def test_anothers_hidden_dataset_is_404_like_a_missing_one(
    stranger_api, owner, make_ready_dataset, fields
):
    dataset = make_ready_dataset(owner, **fields)

    hidden = stranger_api.get(f"{URL}/{dataset.pk}")
    missing = stranger_api.get(f"{URL}/{dataset.pk + 1000}")

    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json()


@pytest.mark.parametrize("raw", ["0", "abc", str(2**63)])
def test_an_invalid_id_is_a_422_naming_it(api, raw):
    assert list(errors(api.get(f"{URL}/{raw}"))) == ["dataset_id"]


# --- POST /api/experiments with user_dataset --------------------------------------------------


def test_an_experiment_trains_on_a_usable_dataset(post_json, api, owner, make_ready_dataset):
    dataset = make_ready_dataset(owner)

    response = post_json(api, EXPERIMENTS, {**ON_UPLOAD, "user_dataset": dataset.pk})

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["user_dataset"] == dataset.pk
    experiment = Experiment.objects.get(pk=body["id"])
    assert experiment.user_dataset == dataset
    # Each worker host resolves the dataset to its own cache; the API names the dataset.
    run_id = body["runs"][0]["id"]
    assert Run.objects.get(pk=run_id).config["data_dir"] is None
    run = api.get(f"/api/runs/{run_id}").json()
    assert "data_dir" not in run["config"]
    assert (run["user_dataset"], run["user_dataset_name"]) == (dataset.pk, dataset.name)


def test_a_public_dataset_of_another_user_may_be_used(post_json, api, stranger, make_ready_dataset):
    dataset = make_ready_dataset(stranger, is_public=True)

    response = post_json(api, EXPERIMENTS, {**ON_UPLOAD, "user_dataset": dataset.pk})

    assert response.status_code == 201, response.content


def test_without_user_dataset_it_is_null(post_json, api):
    response = post_json(api, EXPERIMENTS, {**ON_UPLOAD, "user_dataset": None})

    assert response.status_code == 201, response.content
    assert response.json()["user_dataset"] is None


@pytest.mark.parametrize(
    ("whose", "fields"),
    [
        ("stranger", {}),
        ("stranger", {"is_public": True, "status": "validating"}),
        ("owner", {"status": "pending"}),
        ("owner", {"status": "rejected"}),
    ],
    ids=["private", "public-unready", "own-pending", "own-rejected"],
)
def test_a_dataset_the_caller_may_not_use_is_a_422_on_user_dataset(
    post_json, api, owner, stranger, make_ready_dataset, whose, fields
):
    dataset = make_ready_dataset(owner if whose == "owner" else stranger, **fields)

    response = post_json(api, EXPERIMENTS, {**ON_UPLOAD, "user_dataset": dataset.pk})

    assert list(errors(response)) == ["user_dataset"]
    assert not Experiment.objects.exists() and not Run.objects.exists()


@pytest.mark.parametrize("bad", ["1", 1.0, True, 0, -3, 2**63])
def test_a_user_dataset_that_is_not_a_positive_integer_is_refused(
    post_json, api, owner, make_ready_dataset, bad
):
    make_ready_dataset(owner)  # id 1 exists

    response = post_json(api, EXPERIMENTS, {**ON_UPLOAD, "user_dataset": bad})

    assert "user_dataset" in errors(response)
    assert not Experiment.objects.exists()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"dataset": "omniglot", "split": "paper"}, "overrides.dataset"),
        ({"ways": 6}, "overrides.ways"),
        ({"shots": 9, "queries": 2}, "overrides.shots"),
        ({"train_shots": 11}, "overrides.train_shots"),
    ],
)
def test_a_config_the_dataset_cannot_serve_names_the_override(
    post_json, api, owner, make_ready_dataset, overrides, field
):
    dataset = make_ready_dataset(owner)
    payload = {
        **ON_UPLOAD,
        "overrides": {**ON_UPLOAD["overrides"], **overrides},
        "user_dataset": dataset.pk,
    }

    response = post_json(api, EXPERIMENTS, payload)

    assert list(errors(response)) == [field]
    assert not Experiment.objects.exists()


def test_a_typed_data_dir_is_still_refused(post_json, api, owner, make_ready_dataset):
    dataset = make_ready_dataset(owner)
    payload = {
        **ON_UPLOAD,
        "overrides": {**ON_UPLOAD["overrides"], "data_dir": str(dataset_folder(dataset.pk))},
    }

    response = post_json(api, EXPERIMENTS, payload)

    assert list(errors(response)) == ["overrides.data_dir"]


def test_the_experiment_list_reports_the_dataset(post_json, api, owner, make_ready_dataset):
    dataset = make_ready_dataset(owner)
    post_json(api, EXPERIMENTS, {**ON_UPLOAD, "user_dataset": dataset.pk})

    items = api.get(EXPERIMENTS).json()["items"]

    assert [e["user_dataset"] for e in items] == [dataset.pk]
