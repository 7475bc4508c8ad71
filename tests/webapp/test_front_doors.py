"""The browser form and the JSON API are two doors to one service layer: the same request gets
the same field errors (all of them, at once), the same quota refusal, the same cancel rule and
the same run filters."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from webapp.accounts.models import ApiToken
from webapp.experiments.models import Experiment, Run

NEW = reverse("experiment-new")


def api_client(user) -> Client:
    return Client(headers={"Authorization": f"Bearer {ApiToken.issue(user, 'doors')[1]}"})


def form_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def submit_form(user, *, name, preset, seeds, queue="any", user_dataset=None, **config):
    data = {"name": name, "preset": preset, "seeds": ", ".join(map(str, seeds)), "queue": queue}
    for key, value in config.items():
        data[key] = str(value).lower() if isinstance(value, bool) else str(value)
    if user_dataset is not None:
        data["user_dataset"] = str(user_dataset)
    response = form_client(user).post(NEW, data)
    assert response.status_code == 200, "the form was accepted"
    form = response.context["form"]
    errors = {field: messages[0] for field, messages in form.errors.items()}
    return errors, response.content.decode()


def submit_api(user, *, name, preset, seeds, queue="any", user_dataset=None, **config):
    payload = {"name": name, "preset": preset, "seeds": seeds, "queue": queue}
    payload["overrides"] = config
    if user_dataset is not None:
        payload["user_dataset"] = user_dataset
    return api_client(user).post("/api/experiments", payload, content_type="application/json")


def api_errors(response) -> dict:
    assert response.status_code == 422, response.content
    return {
        (e["field"] or "__all__").removeprefix("overrides."): e["message"]
        for e in response.json()["detail"]
    }


BAD = {
    "name": "",
    "preset": "omniglot-5way-1shot",
    "seeds": [1, 1],
    "inner_lr": -1.0,
    "ways": 5000,
    "meta_step": 0,
    "algorithm": "maml",
}


def test_the_same_bad_payload_gets_the_same_field_errors_from_both(owner):
    form_errors, page = submit_form(owner, **BAD)
    api = api_errors(submit_api(owner, **BAD))

    expected = {"name", "seeds", "inner_lr", "ways", "meta_step", "algorithm"}
    assert set(form_errors) == set(api) == expected
    for field in ("seeds", "inner_lr", "ways", "meta_step", "name"):
        assert form_errors[field] == api[field], field
    assert "423 test classes" in api["ways"] and "positive" in api["inner_lr"]
    assert "Nothing was saved" in page
    assert not Experiment.objects.exists()


def test_both_check_that_the_omniglot_data_is_on_this_server(owner, tmp_path, monkeypatch):
    monkeypatch.setenv("METATRAIN_DATA", str(tmp_path))
    request = {"name": "x", "preset": "omniglot-5way-1shot", "seeds": [0]}

    form_errors, _ = submit_form(owner, **request)
    api = api_errors(submit_api(owner, **request))

    assert form_errors == api and set(api) == {"dataset"}
    assert str(tmp_path / "omniglot") in api["dataset"]
    assert not Run.objects.exists()


def test_both_report_every_way_a_config_overflows_an_uploaded_dataset(owner, make_ready_dataset):
    dataset = make_ready_dataset(owner, val_classes=4, min_class_images=6)
    request = {
        "name": "x",
        "preset": "",
        "seeds": [0],
        "user_dataset": dataset.pk,
        "dataset": "imagefolder",
        "model": "omniglot_conv",
        "augment_rotations": False,
        "ways": 5,
        "shots": 5,
        "queries": 2,
        "train_shots": 7,
    }

    form_errors, _ = submit_form(owner, **request)
    api = api_errors(submit_api(owner, **request))

    assert form_errors == api and set(api) == {"ways", "shots", "train_shots"}


def test_both_refuse_more_meta_iterations_than_one_run_may_have(owner, settings):
    settings.QUOTA_MAX_META_ITERS_PER_RUN = 1000
    request = {"name": "x", "preset": "sine", "seeds": [0], "meta_iters": 2**31 - 1}

    form_errors, _ = submit_form(owner, **request)
    api = api_errors(submit_api(owner, **request))

    assert form_errors == api and "QUOTA_MAX_META_ITERS_PER_RUN = 1,000" in api["meta_iters"]


def test_both_refuse_a_quota_with_the_same_message(owner, settings):
    settings.QUOTA_MAX_ACTIVE_RUNS = 2
    request = {"name": "x", "preset": "sine", "seeds": [0, 1, 2], "meta_iters": 5}

    _, page = submit_form(owner, **request)
    response = submit_api(owner, **request)

    assert response.status_code == 409
    body = response.json()
    assert body["quota"] == "QUOTA_MAX_ACTIVE_RUNS" and (body["limit"], body["usage"]) == (2, 0)
    assert body["detail"] in page.replace("&#x27;", "'")
    assert not Run.objects.exists()


# --- cancel -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "after", "refused"),
    [
        ("queued", "cancelled", False),
        ("lost", "cancelled", False),
        ("running", "running", False),  # asked to stop: cancel_requested
        ("cancelled", "cancelled", False),  # already there: nothing to do, not an error
        ("succeeded", "succeeded", True),
        ("failed", "failed", True),
    ],
)
def test_the_page_and_the_api_cancel_by_one_rule(owner, make_run, status, after, refused):
    page_run, api_run = make_run(owner, status=status), make_run(owner, status=status)
    client = form_client(owner)

    shown = (
        reverse("run-cancel", args=[page_run.pk])
        in client.get(page_run.get_absolute_url()).content.decode()
    )
    page = client.post(reverse("run-cancel", args=[page_run.pk]), follow=True)
    api = api_client(owner).post(f"/api/runs/{api_run.pk}/cancel")

    page_run.refresh_from_db()
    api_run.refresh_from_db()
    assert page_run.status == api_run.status == after
    active = status in ("queued", "lost", "running")
    assert page_run.cancel_requested == api_run.cancel_requested == active
    assert api.status_code == (409 if refused else 200)
    assert ("nothing to cancel" in page.content.decode()) is refused
    assert shown is active


# --- filters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "q=special",
        "q=in+the+notes",
        "owner=me",
        "owner=stranger",
        "status=succeeded&sort=accuracy",
        "algorithm=fomaml&sort=oldest",
        "dataset=sine&sort=name",
    ],
)
def test_the_runs_page_and_the_api_list_the_same_runs(owner, stranger, make_run, query):
    special = make_run(owner, name="a Special one", status="cancelled")
    special.experiment.description = "found in the notes"
    special.experiment.save()
    make_run(owner, name="good", test_accuracy=0.9, algorithm="fomaml")
    make_run(stranger, name="better", test_accuracy=0.95, dataset="sine")
    make_run(stranger, name="queued", status="queued")

    page = form_client(owner).get(f"{reverse('run-list')}?{query}")
    api = api_client(owner).get(f"/api/runs?{query}")

    assert api.status_code == 200, api.content
    page_ids = [row["id"] for row in page.context["runs"]]
    assert page_ids == [item["id"] for item in api.json()["items"]]
    assert page_ids  # every query here matches something


def test_the_api_still_accepts_search_the_old_name_of_q(owner, make_run):
    make_run(owner, name="alpha")
    make_run(owner, name="beta")
    client = api_client(owner)

    by_q = client.get("/api/runs", {"q": "alp"}).json()["items"]
    by_search = client.get("/api/runs", {"search": "alp"}).json()["items"]
    both = client.get("/api/runs", {"q": "bet", "search": "alp"}).json()["items"]

    assert [r["experiment_name"] for r in by_q] == [r["experiment_name"] for r in by_search]
    assert [r["experiment_name"] for r in by_q] == ["alpha"]
    assert [r["experiment_name"] for r in both] == ["beta"]  # q wins
