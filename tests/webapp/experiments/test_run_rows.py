"""The runs list's rows: rendered once per content, never shown stale."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from webapp.experiments.filtering import RunFilters, filter_runs
from webapp.experiments.models import Run
from webapp.experiments.run_rows import RowCache


def listed(user):
    return list(filter_runs(user, RunFilters()))


@pytest.fixture
def rows():
    return RowCache()


def test_a_stopped_runs_row_is_rendered_once_and_then_reused(rows, owner, make_run):
    make_run(owner, status="succeeded", test_accuracy=0.9)

    first = rows.rows(listed(owner))
    again = rows.rows(listed(owner))

    assert rows.rendered == 1
    assert again == first and "90.0" in first[0]


def test_a_renamed_retagged_or_reevaluated_run_is_rendered_afresh(rows, owner, make_run):
    run = make_run(owner, status="succeeded", test_accuracy=0.5)
    rows.rows(listed(owner))

    Run.objects.filter(pk=run.pk).update(name="baseline", tags="fast,paper", test_accuracy=0.75)
    row = rows.rows(listed(owner))[0]

    assert rows.rendered == 2
    assert "baseline" in row and "?tag=paper" in row and "75.0" in row


def test_a_renamed_experiment_or_owner_is_shown(rows, owner, make_run):
    run = make_run(owner, status="succeeded")
    rows.rows(listed(owner))

    run.experiment.name = "renamed experiment"
    run.experiment.save(update_fields=["name"])
    owner.username = "new-owner-name"
    owner.save(update_fields=["username"])
    row = rows.rows(listed(owner))[0]

    assert "renamed experiment" in row and "new-owner-name" in row


def test_a_running_run_is_rendered_every_time(rows, owner, make_run):
    make_run(owner, status="running", started_at=timezone.now() - timedelta(seconds=90))

    rows.rows(listed(owner))
    rows.rows(listed(owner))

    assert rows.rendered == 2


def test_the_least_recently_used_rows_are_dropped_beyond_the_bound(owner, make_run):
    rows = RowCache(max_rows=2)
    for seed in range(3):
        make_run(owner, status="succeeded", seed=seed)
    runs = listed(owner)  # newest first: seeds 2, 1, 0

    rows.rows(runs)  # all three rendered; seed 2's row dropped
    rows.rows(runs[1:])  # seeds 1 and 0: kept
    rows.rows(runs[:1])  # seed 2: rendered again

    assert rows.rendered == 4


def test_the_runs_page_shows_each_run_in_its_row(client, owner, make_run):
    done = make_run(owner, status="succeeded", name="kept row", test_accuracy=0.8)
    live = make_run(owner, status="running", seed=1, started_at=timezone.now())
    client.force_login(owner)

    for _ in range(2):  # the second answer comes from kept rows
        page = client.get("/").content.decode()
        assert f'<tr data-run="{done.pk}">' in page and f'<tr data-run="{live.pk}">' in page
        assert "kept row" in page and "80.0" in page


def test_the_runs_page_costs_the_same_queries_for_one_run_or_many(client, owner, make_run):
    """The list reads only the row's columns (ROW_FIELDS): a row that needed another would
    cost a query per run."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.force_login(owner)
    make_run(owner, status="succeeded", test_accuracy=0.5, tags="a,b")
    with CaptureQueriesContext(connection) as one:
        client.get("/")
    for seed in range(1, 6):
        make_run(owner, status="running", seed=seed, started_at=timezone.now())
        make_run(owner, status="failed", seed=seed + 10, name=f"run {seed}")
    with CaptureQueriesContext(connection) as many:
        page = client.get("/").content.decode()

    assert len(many) == len(one)
    assert page.count("<tr data-run=") == 11
