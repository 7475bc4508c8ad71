"""The compare page: pick runs, overlay their curves, diff their configs."""

from __future__ import annotations

import json

from django.urls import reverse

from webapp.experiments.models import MetricPoint

URL = reverse("compare")


def chart_data(response) -> list[dict]:
    blob = response.content.decode().split('id="compare-data" type="application/json">')[1]
    return json.loads(blob.split("</script>")[0])


def test_compare_needs_a_login(client):
    assert client.get(URL).status_code == 302


def test_without_a_selection_it_offers_runs_to_pick(client, owner, make_run):
    run = make_run(owner, name="pick me")
    client.force_login(owner)

    response = client.get(URL)

    body = response.content.decode()
    assert response.status_code == 200
    assert f'value="{run.pk}"' in body and "pick me" in body
    assert "compare-data" not in body


def test_only_the_config_keys_that_differ_are_highlighted(client, owner, stranger, make_run):
    a = make_run(owner, name="a", config={"inner_lr": 0.001, "meta_batch": 5})
    b = make_run(owner, name="b", config={"inner_lr": 0.0005, "meta_batch": 5})
    client.force_login(stranger)

    response = client.get(URL, {"runs": [a.pk, b.pk]})

    rows = {row["key"]: row for row in response.context["diff_rows"]}
    assert rows["inner_lr"]["differs"] is True
    assert rows["inner_lr"]["values"] == [0.001, 0.0005]
    assert rows["meta_batch"]["differs"] is False
    assert rows["dataset"]["differs"] is False
    assert response.context["differing"] == 1
    table = response.content.decode().split('id="config-diff"')[1]
    assert table.count('class="differs"') == 1


def test_only_diff_hides_the_equal_settings(client, owner, make_run):
    a = make_run(owner, name="a", config={"inner_lr": 0.001})
    b = make_run(owner, name="b", config={"inner_lr": 0.002})
    client.force_login(owner)

    response = client.get(URL, {"runs": f"{a.pk},{b.pk}", "only_diff": "1"})

    table = response.content.decode().split('id="config-diff"')[1].split("</table>")[0]
    assert "inner_lr" in table
    assert "meta_batch" not in table


def test_the_selected_runs_curves_come_with_the_page(client, owner, make_run):
    a = make_run(owner, name="a")
    b = make_run(owner, name="b")
    MetricPoint.objects.create(run=a, name="inner_loss", step=1, value=2.0)
    MetricPoint.objects.create(run=b, name="inner_loss", step=1, value=3.0)
    client.force_login(owner)

    data = chart_data(client.get(URL, {"runs": [a.pk, b.pk, a.pk]}))

    assert [d["id"] for d in data] == [a.pk, b.pk]  # duplicates dropped, order kept
    assert [d["series"]["inner_loss"]["values"] for d in data] == [[2.0], [3.0]]


def test_a_missing_run_in_the_selection_is_404(client, owner, make_run):
    run = make_run(owner)
    client.force_login(owner)

    assert client.get(URL, {"runs": [run.pk, 99999]}).status_code == 404


def test_junk_in_the_selection_is_ignored(client, owner, make_run):
    run = make_run(owner)
    client.force_login(owner)

    response = client.get(URL, {"runs": [f"{run.pk}", "abc", "-3"]})

    assert response.status_code == 200
    assert response.context["runs"] == [run]
