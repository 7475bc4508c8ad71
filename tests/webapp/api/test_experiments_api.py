"""POST/GET/DELETE /api/experiments: create from a preset plus overrides, strict validation."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from metatrain import PRESETS
from webapp.experiments.models import Experiment, Run

URL = "/api/experiments"
VALID = {
    "name": "reptile baseline",
    "preset": "omniglot-5way-1shot",
    "overrides": {"meta_iters": 20, "final_eval_tasks": 10},
    "seeds": [1, 2, 3],
}


def test_it_creates_an_experiment_with_one_queued_run_per_seed(post_json, api):
    response = post_json(api, URL, {**VALID, "description": "first try", "queue": "cpu"})

    assert response.status_code == 201, response.content
    body = response.json()
    experiment = Experiment.objects.get(pk=body["id"])
    assert body["name"] == "reptile baseline" and body["preset"] == "omniglot-5way-1shot"
    assert body["owner"] == "owner" and body["can_change"] is True
    assert [r["seed"] for r in body["runs"]] == [1, 2, 3]
    assert {r["status"] for r in body["runs"]} == {"queued"}
    assert {r["queue"] for r in body["runs"]} == {"cpu"}
    # The preset's values, with the overrides applied, and no seed in the experiment's config.
    expected = {k: v for k, v in PRESETS["omniglot-5way-1shot"].items() if k != "seed"}
    assert experiment.config == {**expected, "meta_iters": 20, "final_eval_tasks": 10}
    assert sorted(Run.objects.filter(experiment=experiment).values_list("seed", flat=True)) == [
        1,
        2,
        3,
    ]
    assert Run.objects.get(experiment=experiment, seed=2).config["seed"] == 2


def test_without_a_preset_the_config_defaults_apply(post_json, api):
    response = post_json(api, URL, {"name": "defaults", "overrides": {"shots": 5}})

    assert response.status_code == 201, response.content
    run = response.json()["runs"][0]
    assert run["seed"] == 0 and run["shots"] == 5 and run["dataset"] == "omniglot"


def test_a_broker_outage_leaves_the_runs_queued_and_is_not_an_error(
    post_json, api, monkeypatch, django_capture_on_commit_callbacks
):
    from kombu.exceptions import OperationalError

    from webapp.celery import app

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to redis: Connection refused.")

    monkeypatch.setattr(app, "send_task", broker_down)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = post_json(api, URL, VALID)

    assert response.status_code == 201
    assert len(callbacks) == 1
    assert set(Run.objects.values_list("status", "dispatched_at")) == {("queued", None)}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"ways": 1}, "overrides.ways"),  # out of range (Config)
        ({"ways": "five"}, "overrides.ways"),  # wrong type (Config)
        ({"ways": 5.0}, "overrides.ways"),  # a float is not an integer
        ({"ways": [5]}, "overrides.ways"),  # not a scalar
        ({"ways": 10**12}, "overrides.ways"),  # beyond the database's integers
        ({"inner_lr": -1.0}, "overrides.inner_lr"),
        ({"warp_speed": 9}, "overrides.warp_speed"),  # unknown config field
        ({"seed": 3}, "overrides.seed"),  # seeds go in `seeds`
        ({"data_dir": "x" * 1001}, "overrides.data_dir"),
        ({"data_dir": "/etc"}, "overrides.data_dir"),  # no server paths from the dashboard
        ({"data_dir": "a\x00b"}, "overrides.data_dir"),
    ],
)
def test_it_names_the_invalid_config_field(post_json, api, overrides, field):
    response = post_json(api, URL, {**VALID, "overrides": overrides})

    assert response.status_code == 422, response.content
    (error,) = response.json()["detail"]
    assert error["field"] == field and error["message"]
    assert not Experiment.objects.exists()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": 5}, "name"),
        ({"name": ""}, "name"),
        ({"name": "n" * 201}, "name"),
        ({"name": "nul\x00"}, "name"),
        ({"description": "d" * 5001}, "description"),
        ({"preset": "omniglot-99way"}, "preset"),
        ({"seeds": []}, "seeds"),
        ({"seeds": [1, 1]}, "seeds"),
        ({"seeds": list(range(21))}, "seeds"),
        ({"seeds": ["1"]}, "seeds.0"),
        ({"seeds": [1.5]}, "seeds.0"),
        ({"seeds": [True]}, "seeds.0"),
        ({"seeds": [-1]}, "seeds"),  # out of range: the service's check, as in the form
        ({"seeds": [2**40]}, "seeds"),
        ({"queue": "tpu"}, "queue"),
        ({"overrides": [1, 2]}, "overrides"),
        ({"owner": "someone-else"}, "owner"),  # unknown keys are refused
    ],
)
def test_it_rejects_bad_top_level_fields(post_json, api, change, field):
    response = post_json(api, URL, {**VALID, **change})

    assert response.status_code == 422, response.content
    assert [e["field"] for e in response.json()["detail"]] == [field]
    assert not Experiment.objects.exists()


def test_a_missing_name_is_reported(post_json, api):
    response = post_json(api, URL, {"seeds": [1]})

    assert response.status_code == 422
    assert response.json()["detail"] == [{"field": "name", "message": "This field is required."}]


@pytest.mark.parametrize(
    "raw",
    [
        '{"name": "x", "overrides": {"inner_lr": NaN}}',
        '{"name": "x", "overrides": {"inner_lr": Infinity}}',
        '{"name": "x", "overrides": {"inner_lr": -Infinity}}',
        '{"name": "x", "overrides": {"inner_lr": 1e999}}',
        '{"name": "x", "seeds": [' + "9" * 5000 + "]}",
        '{"name": "x",',
        "not json",
        "\xff\xfe",
    ],
)
def test_it_refuses_bodies_that_are_not_strict_json(post_json, api, raw):
    response = post_json(api, URL, raw=raw)

    assert response.status_code == 400
    assert "detail" in response.json()
    assert not Experiment.objects.exists()


@pytest.mark.parametrize("raw", ["", "[]", '"a string"', "null", "42"])
def test_it_asks_for_a_json_object(post_json, api, raw):
    response = post_json(api, URL, raw=raw)

    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "body"


def test_it_lists_experiments_newest_first_with_pagination_and_owner_filter(
    api, owner, stranger, make_experiment
):
    first = make_experiment(owner, name="first")
    make_experiment(stranger, name="theirs")
    last = make_experiment(owner, name="last", seeds=[4, 5])

    everything = api.get(URL).json()
    mine = api.get(URL, {"owner": "owner", "limit": 1}).json()
    also_mine = api.get(URL, {"owner": "me", "limit": 1}).json()
    second_page = api.get(URL, {"owner": "owner", "limit": 1, "offset": 1}).json()

    assert everything["count"] == 3
    assert [e["name"] for e in everything["items"]] == ["last", "theirs", "first"]
    assert [e["can_change"] for e in everything["items"]] == [True, False, True]
    assert mine["count"] == 2 and [e["id"] for e in mine["items"]] == [last.pk]
    assert also_mine == mine  # `me` is the caller, as in the runs list
    assert [r["seed"] for r in mine["items"][0]["runs"]] == [4, 5]
    assert [e["id"] for e in second_page["items"]] == [first.pk]


@pytest.mark.parametrize("query", [{"limit": 0}, {"limit": 201}, {"offset": -1}, {"limit": "x"}])
def test_it_rejects_bad_pagination(api, query):
    assert api.get(URL, query).status_code == 422


def test_it_lists_experiments_in_a_bounded_number_of_queries(
    api, owner, make_experiment, django_assert_max_num_queries
):
    for i in range(5):
        make_experiment(owner, name=f"e{i}", seeds=[1, 2])

    with django_assert_max_num_queries(6):
        assert len(api.get(URL).json()["items"]) == 5


def test_it_shows_one_experiment_to_any_user(stranger_api, owner, make_experiment):
    experiment = make_experiment(owner, seeds=[7])

    body = stranger_api.get(f"{URL}/{experiment.pk}").json()

    assert body["id"] == experiment.pk and body["can_change"] is False
    assert body["runs"][0]["seed"] == 7
    assert body["config"] == {k: v for k, v in experiment.config.items() if k != "data_dir"}


def test_an_unknown_experiment_is_404(api):
    assert api.get(f"{URL}/999999").status_code == 404
    assert api.delete(f"{URL}/999999").status_code == 404


def test_the_owner_deletes_an_experiment_with_its_runs(api, owner, make_experiment):
    experiment = make_experiment(owner, seeds=[1, 2])

    response = api.delete(f"{URL}/{experiment.pk}")

    assert response.status_code == 204
    assert not Experiment.objects.exists() and not Run.objects.exists()


def test_staff_may_delete_anyones_experiment(staff_api, owner, make_experiment):
    experiment = make_experiment(owner)

    assert staff_api.delete(f"{URL}/{experiment.pk}").status_code == 204
    assert not Experiment.objects.exists()


def test_it_refuses_to_delete_an_experiment_with_a_running_run(api, owner, make_experiment):
    experiment = make_experiment(owner)
    experiment.runs.update(status=Run.Status.RUNNING)

    response = api.delete(f"{URL}/{experiment.pk}")

    assert response.status_code == 409
    assert "running" in response.json()["detail"]
    assert Experiment.objects.filter(pk=experiment.pk).exists()


def test_created_experiment_round_trips_through_get(post_json, api):
    created = post_json(api, URL, VALID).json()

    fetched = api.get(f"{URL}/{created['id']}").json()

    assert json.dumps(fetched, sort_keys=True) == json.dumps(created, sort_keys=True)


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
config_keys = st.sampled_from(["ways", "shots", "inner_lr", "dataset", "seed", "meta_iters"])


@hypothesis_settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    payload=st.fixed_dictionaries(
        {"name": st.text(max_size=5) | json_values},
        optional={
            "overrides": st.dictionaries(
                config_keys | st.text(max_size=70), json_values, max_size=3
            )
            | json_values,
            "seeds": st.lists(st.integers() | json_scalars, max_size=3) | json_values,
            "queue": json_values,
            "preset": st.sampled_from(list(PRESETS)) | json_values,
        },
    )
)
def test_any_json_body_gives_201_or_a_4xx_with_a_message(post_json, api, payload):
    raw = json.dumps(payload)  # NaN/Infinity included: json.dumps writes them

    response = post_json(api, URL, raw=raw)

    assert response.status_code in (201, 400, 422), response.content
    if response.status_code != 201:
        detail = response.json()["detail"]
        assert detail and (isinstance(detail, str) or all(d["message"] for d in detail))


def test_an_oversized_body_is_413(post_json, api):
    response = post_json(api, URL, raw='{"name": "' + "x" * 3_000_000 + '"}')

    assert response.status_code == 413
    assert not Experiment.objects.exists()
