"""/api/runs: list and filters, detail, cancel, metric series, evaluations and downloads."""

from __future__ import annotations

import csv
import io

import pytest
from django.core.files.base import ContentFile

from webapp.experiments.models import Evaluation, MetricPoint, Run

URL = "/api/runs"


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def test_it_lists_runs_newest_first(api, owner, make_run):
    old = make_run(owner, name="old")
    new = make_run(owner, name="new")

    body = api.get(URL).json()

    assert body["count"] == 2
    assert [r["id"] for r in body["items"]] == [new.pk, old.pk]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"status": "running"}, ["running"]),
        ({"dataset": "sine"}, ["sine"]),
        ({"algorithm": "fomaml"}, ["fomaml"]),
        ({"owner": "stranger"}, ["stranger's"]),
        ({"search": "SPECIAL"}, ["special"]),
        ({"search": "in the notes"}, ["special"]),
        ({"status": "succeeded", "dataset": "omniglot", "owner": "owner"}, ["plain"]),
    ],
)
def test_it_filters_runs(api, owner, stranger, make_run, query, expected):
    make_run(owner, name="plain")
    make_run(owner, name="running", status="running")
    make_run(owner, name="sine", dataset="sine", ways=None)
    make_run(owner, name="fomaml", algorithm="fomaml", status="failed")
    make_run(stranger, name="stranger's", status="queued")
    special = make_run(owner, name="a Special one", status="cancelled")
    special.experiment.description = "written in the notes"
    special.experiment.save()
    names = {"a Special one": "special"}

    items = api.get(URL, query).json()["items"]

    assert [names.get(r["experiment_name"], r["experiment_name"]) for r in items] == expected


def test_it_paginates_runs(api, owner, make_run):
    runs = [make_run(owner, name=f"r{i}") for i in range(5)]

    page = api.get(URL, {"limit": 2, "offset": 2}).json()

    assert page["count"] == 5 and page["limit"] == 2 and page["offset"] == 2
    assert [r["id"] for r in page["items"]] == [runs[2].pk, runs[1].pk]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "exploded"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 10_000}, "limit"),
        ({"offset": 2**40}, "offset"),
        ({"search": "s" * 201}, "search"),
    ],
)
def test_it_rejects_bad_filters(api, query, field):
    response = api.get(URL, query)

    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == field


def test_run_detail_has_the_config_and_accuracy_as_a_fraction(api, owner, make_run):
    run = make_run(owner, test_accuracy=0.9612, test_ci95=0.0021, test_tasks=10_000)

    body = api.get(f"{URL}/{run.pk}").json()

    assert body["id"] == run.pk and body["status"] == "succeeded"
    assert body["test_accuracy"] == 0.9612 and body["test_ci95"] == 0.0021
    assert body["config"] == run.config and body["config_hash"] == run.config_hash
    assert body["owner"] == "owner" and body["can_change"] is True


def test_a_non_finite_number_is_sent_as_null(api, owner, make_run):
    run = make_run(owner, seconds_per_iteration=float("inf"))

    response = api.get(f"{URL}/{run.pk}")

    assert response.status_code == 200
    assert response.json()["seconds_per_iteration"] is None


@pytest.mark.parametrize("path", ["", "/metrics", "/evaluations", "/config", "/metrics.csv"])
def test_an_unknown_run_is_404(api, path):
    assert api.get(f"{URL}/424242{path}").status_code == 404


def test_the_owner_cancels_a_queued_run_at_once(api, owner, make_experiment):
    run = make_experiment(owner).runs.get()

    response = api.post(f"{URL}/{run.pk}/cancel")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED and run.finished_at is not None


def test_cancelling_a_running_run_asks_the_worker_to_stop(api, owner, make_run):
    run = make_run(owner, status="running")

    body = api.post(f"{URL}/{run.pk}/cancel").json()

    assert body["status"] == "running" and body["cancel_requested"] is True
    run.refresh_from_db()
    assert run.cancel_requested


@pytest.mark.parametrize("status", ["succeeded", "failed"])
def test_a_finished_run_cannot_be_cancelled(api, owner, make_run, status):
    run = make_run(owner, status=status)

    response = api.post(f"{URL}/{run.pk}/cancel")

    assert response.status_code == 409
    run.refresh_from_db()
    assert run.status == status and not run.cancel_requested


def test_staff_may_cancel_anyones_run(staff_api, owner, make_run):
    run = make_run(owner, status="queued")

    assert staff_api.post(f"{URL}/{run.pk}/cancel").status_code == 200
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED


def test_metrics_are_bucketed_for_charts(api, owner, make_run):
    run = make_run(owner, status="running")
    MetricPoint.objects.bulk_create(
        [MetricPoint(run=run, name="inner_loss", step=s, value=1.0 / s) for s in range(1, 3001)]
        + [MetricPoint(run=run, name="seconds", step=s, value=0.1) for s in range(1, 11)]
    )

    body = api.get(f"{URL}/{run.pk}/metrics", {"max_points": 100}).json()

    assert body["run"] == run.pk and body["names"] == ["inner_loss", "seconds"]
    loss = body["series"]["inner_loss"]
    assert loss["downsampled"] is True and len(loss["steps"]) <= 100
    assert loss["steps"][0] == 1 and loss["steps"][-1] == 3000
    assert max(loss["max"]) == 1.0
    assert body["series"]["seconds"]["downsampled"] is False


def test_metrics_window_returns_only_the_zoomed_steps(api, owner, make_run):
    run = make_run(owner, status="running")
    MetricPoint.objects.bulk_create(
        [MetricPoint(run=run, name="inner_loss", step=s, value=float(s)) for s in range(1, 3001)]
    )

    body = api.get(
        f"{URL}/{run.pk}/metrics", {"from_step": 1000, "to_step": 1099, "max_points": 500}
    ).json()
    backwards = api.get(f"{URL}/{run.pk}/metrics", {"from_step": 10, "to_step": 9})

    loss = body["series"]["inner_loss"]
    assert loss["downsampled"] is False and loss["steps"] == list(range(1000, 1100))
    assert backwards.status_code == 422
    assert "to_step" in backwards.content.decode()


def test_metrics_tail_returns_only_newer_points_of_the_named_series(api, owner, make_run):
    run = make_run(owner, status="running")
    MetricPoint.objects.bulk_create(
        [
            MetricPoint(run=run, name=name, step=s, value=float(s))
            for name in ("a", "b", "c")
            for s in range(1, 21)
        ]
    )

    body = api.get(f"{URL}/{run.pk}/metrics?names=a,b&after_step=17").json()
    repeated = api.get(f"{URL}/{run.pk}/metrics?names=a&names=c&after_step=19").json()

    assert sorted(body["series"]) == ["a", "b"]
    assert body["series"]["a"]["steps"] == [18, 19, 20]
    assert body["series"]["a"]["last_step"] == 20
    assert sorted(repeated["series"]) == ["a", "c"]
    assert repeated["series"]["c"]["values"] == [20.0]


def test_metrics_tail_of_every_series_names_them_all_and_404s_for_no_run(api, owner, make_run):
    run = make_run(owner, status="running")
    MetricPoint.objects.bulk_create(
        [MetricPoint(run=run, name=name, step=s, value=s / 2) for name in "ab" for s in (1, 2)]
    )
    MetricPoint.objects.create(run=run, name="c", step=1, value=0.0)

    body = api.get(f"{URL}/{run.pk}/metrics?after_step=1").json()
    missing = api.get(f"{URL}/{run.pk + 1000}/metrics?after_step=1")

    assert body["run"] == run.pk and body["names"] == ["a", "b", "c"]
    assert body["series"]["a"]["steps"] == [2] and body["series"]["a"]["values"] == [1.0]
    assert body["series"]["c"]["steps"] == [] and body["series"]["c"]["last_step"] is None
    assert missing.status_code == 404


@pytest.mark.parametrize(
    "query",
    [{"max_points": 1}, {"max_points": 10**6}, {"after_step": "x"}, {"after_step": 2**40}],
)
def test_metrics_reject_bad_parameters(api, owner, make_run, query):
    run = make_run(owner)

    assert api.get(f"{URL}/{run.pk}/metrics", query).status_code == 422


def test_metrics_reject_too_many_names(api, owner, make_run):
    run = make_run(owner)

    response = api.get(f"{URL}/{run.pk}/metrics", {"names": ",".join(f"m{i}" for i in range(51))})

    assert response.status_code == 422 and response.json()["detail"][0]["field"] == "names"


def test_evaluations_are_listed_in_iteration_order(api, owner, make_run):
    run = make_run(owner)
    Evaluation.objects.create(
        run=run, split="test", iteration=100, accuracy=0.9, ci95=0.01, tasks=50
    )
    Evaluation.objects.create(run=run, split="validation", iteration=10, accuracy=0.5, tasks=20)

    body = api.get(f"{URL}/{run.pk}/evaluations").json()

    assert [(e["split"], e["iteration"], e["accuracy"]) for e in body] == [
        ("validation", 10, 0.5),
        ("test", 100, 0.9),
    ]


def test_the_config_download_is_the_runs_config(api, owner, make_run):
    run = make_run(owner, seed=11)

    body = api.get(f"{URL}/{run.pk}/config").json()

    assert body == run.config and body["seed"] == 11


def test_the_initialization_is_404_until_the_run_succeeded(api, owner, make_run, media):
    run = make_run(owner, status="running")
    run.initialization.save("init.safetensors", ContentFile(b"weights"), save=True)

    assert api.get(f"{URL}/{run.pk}/initialization").status_code == 404

    run.status = Run.Status.SUCCEEDED
    run.save()
    response = api.get(f"{URL}/{run.pk}/initialization")

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"weights"
    assert response["Content-Type"] == "application/octet-stream"
    assert f"run-{run.pk}-o5w1s-seed0-initialization.safetensors" in response["Content-Disposition"]


def test_the_initialization_is_404_when_the_file_is_missing(api, owner, make_run, media):
    no_file = make_run(owner)
    gone = make_run(owner)
    gone.initialization.name = "runs/deleted.safetensors"
    gone.save()

    assert api.get(f"{URL}/{no_file.pk}/initialization").status_code == 404
    assert api.get(f"{URL}/{gone.pk}/initialization").status_code == 404


def test_metrics_csv_streams_every_point(api, owner, make_run):
    run = make_run(owner)
    MetricPoint.objects.bulk_create(
        [MetricPoint(run=run, name="loss", step=s, value=s * 0.5) for s in range(3)]
    )

    response = api.get(f"{URL}/{run.pk}/metrics.csv")

    assert response.status_code == 200 and response.streaming
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows == [
        ["step", "name", "value"],
        ["0", "loss", "0.0"],
        ["1", "loss", "0.5"],
        ["2", "loss", "1.0"],
    ]


@pytest.mark.parametrize(
    "url",
    [
        "/api/runs?owner=a%00b",
        "/api/runs?dataset=a%00b",
        "/api/runs?algorithm=a%00b",
        "/api/runs?search=a%00b",
        "/api/experiments?owner=a%00b",
        "/api/runs/1/metrics?names=a%00b",
    ],
)
def test_nul_characters_in_queries_are_refused_not_a_server_error(api, owner, make_run, url):
    make_run(owner)  # run #1 may or may not exist; either way no 500

    assert api.get(url).status_code in (404, 422)


def test_a_nul_character_in_a_leaderboard_key_is_404(api):
    assert api.get("/api/leaderboard/omniglot%00-paper-5way-1shot-transductive").status_code == 404


def test_the_runs_list_costs_the_same_queries_for_one_run_or_many(api, owner, make_run):
    """The list leaves columns out (filtering.UNLISTED): an answer that needed one would cost
    a query per run."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    make_run(owner, status="succeeded", test_accuracy=0.5)
    api.get(URL)  # the token's first use of the minute also writes last_used_at
    with CaptureQueriesContext(connection) as one:
        api.get(URL)
    for seed in range(1, 6):
        make_run(owner, status="running", seed=seed)
    with CaptureQueriesContext(connection) as many:
        body = api.get(URL).json()

    assert len(many) == len(one)
    assert body["count"] == 6 and len(body["items"]) == 6


def test_a_listed_run_is_the_run_as_its_own_answer_gives_it(api, owner, stranger, make_run):
    """The list reads plain values (run_values), the detail a model instance: every field but
    the config must agree, whoever owns the run and whatever dataset it trains on."""
    from django.utils import timezone

    from webapp.datasets.models import UserDataset

    ready = UserDataset.Status.READY
    datasets = [
        None,
        UserDataset.objects.create(owner=owner, name="mine, private", status=ready),
        UserDataset.objects.create(owner=stranger, name="theirs, private", status=ready),
        UserDataset.objects.create(owner=stranger, name="public", is_public=True, status=ready),
        UserDataset.objects.create(owner=stranger, name="public, not ready", is_public=True),
    ]
    now = timezone.now()
    kinds = [
        {"status": "succeeded", "test_accuracy": 0.123456789, "test_ci95": 0.01, "test_tasks": 9,
         "initialization": "runs/1/init.safetensors", "started_at": now, "finished_at": now},
        {"status": "running", "iteration": 7, "total_iterations": 10, "seconds_per_iteration": 0.5,
         "phase": "evaluating", "eval_tasks_done": 3, "eval_tasks_total": 9,
         "eval_tasks_per_second": 2.0, "started_at": now, "heartbeat_at": now},
        {"status": "cancelled", "checkpoint_file": "runs/2/checkpoint.pt", "tags": ",a,b,",
         "notes": "n", "test_loss_before": 1.23456789, "test_loss_after": 0.1},
        {"status": "queued", "cancel_requested": True},
    ]  # fmt: skip
    for index, dataset in enumerate(datasets):
        for kind in kinds:
            who = owner if index % 2 else stranger
            run = make_run(who, name=f"run {index}", seed=index, **kind)
            if dataset is not None:
                run.experiment.user_dataset = dataset
                run.experiment.save(update_fields=["user_dataset"])

    items = api.get(URL, {"limit": 100}).json()["items"]

    assert len(items) == len(datasets) * len(kinds)
    for item in items:
        detail = api.get(f"{URL}/{item['id']}").json()
        if item["status"] == "running":  # counted to now: later in the second answer
            assert 0 <= item.pop("duration_seconds") <= detail.pop("duration_seconds")
        assert item == {k: v for k, v in detail.items() if k not in ("config", "config_hash")}
    assert {item["user_dataset_name"] for item in items} == {
        None, "mine, private", "public"
    }  # fmt: skip
