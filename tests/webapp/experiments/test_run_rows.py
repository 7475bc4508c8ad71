"""The runs list's rows: rendered once per content, never shown stale."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from webapp.experiments.filtering import RunFilters, filter_runs
from webapp.experiments.models import Run
from webapp.experiments.run_rows import ROW_FIELDS, RowCache, row_values


def listed(user):
    """The runs page's rows, as the page reads them."""
    return list(filter_runs(user, RunFilters()).values(*ROW_FIELDS))


def rendered(rows: RowCache, user, page=None):
    return rows.rows(listed(user) if page is None else page, filter_runs(user, RunFilters()))


@pytest.fixture
def rows():
    return RowCache()


def test_a_stopped_runs_row_is_rendered_once_and_then_reused(rows, owner, make_run):
    make_run(owner, status="succeeded", test_accuracy=0.9)

    first = rendered(rows, owner)
    again = rendered(rows, owner)

    assert rows.rendered == 1
    assert again == first and "90.0" in first[0]


def test_a_renamed_retagged_or_reevaluated_run_is_rendered_afresh(rows, owner, make_run):
    run = make_run(owner, status="succeeded", test_accuracy=0.5)
    rendered(rows, owner)

    Run.objects.filter(pk=run.pk).update(name="baseline", tags="fast,paper", test_accuracy=0.75)
    row = rendered(rows, owner)[0]

    assert rows.rendered == 2
    assert "baseline" in row and "?tag=paper" in row and "75.0" in row


def test_a_renamed_experiment_or_owner_is_shown(rows, owner, make_run):
    run = make_run(owner, status="succeeded")
    rendered(rows, owner)

    run.experiment.name = "renamed experiment"
    run.experiment.save(update_fields=["name"])
    owner.username = "new-owner-name"
    owner.save(update_fields=["username"])
    row = rendered(rows, owner)[0]

    assert "renamed experiment" in row and "new-owner-name" in row


def test_a_running_run_is_rendered_every_time(rows, owner, make_run):
    make_run(owner, status="running", started_at=timezone.now() - timedelta(seconds=90))

    rendered(rows, owner)
    rendered(rows, owner)

    assert rows.rendered == 2


def test_the_least_recently_used_rows_are_dropped_beyond_the_bound(owner, make_run):
    rows = RowCache(max_rows=2)
    for seed in range(3):
        make_run(owner, status="succeeded", seed=seed)
    runs = listed(owner)  # newest first: seeds 2, 1, 0

    rendered(rows, owner, runs)  # all three rendered; seed 2's row dropped
    rendered(rows, owner, runs[1:])  # seeds 1 and 0: kept
    rendered(rows, owner, runs[:1])  # seed 2: rendered again

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


def test_a_page_of_kept_rows_reads_no_run_beyond_the_page(client, owner, make_run):
    """Kept rows need only the page's plain values: the query that loads runs to render them
    is not made."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.force_login(owner)
    make_run(owner, status="succeeded", test_accuracy=0.5)
    with CaptureQueriesContext(connection) as first:
        client.get("/")
    with CaptureQueriesContext(connection) as again:
        client.get("/")

    assert len(again) == len(first) - 1


def test_a_row_read_as_values_and_the_same_run_loaded_have_the_same_key(owner, make_run):
    """The page looks rows up by their values; they are kept under the loaded run's."""
    run = make_run(owner, status="succeeded", name="n", tags="x,y", test_accuracy=0.25)
    loaded = filter_runs(owner, RunFilters()).only(*ROW_FIELDS).get(pk=run.pk)

    assert row_values(loaded) == tuple(listed(owner)[0][name] for name in ROW_FIELDS)


def test_a_run_deleted_between_the_page_and_its_rendering_is_left_out(rows, owner, make_run):
    gone = make_run(owner, status="succeeded", seed=1)
    make_run(owner, status="succeeded", seed=2)
    page = listed(owner)
    gone.delete()

    assert len(rendered(rows, owner, page)) == 1
