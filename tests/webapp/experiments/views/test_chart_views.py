"""What the run and compare pages give their charts: the periodic evaluation's title, the
shared chart code, and where a zoomed chart fetches its window."""

from __future__ import annotations

import json

from django.urls import reverse

from webapp.experiments.chart_titles import (
    COMPARE_MIXED_TITLE,
    TEST_CLASSES_TITLE,
    VALIDATION_CLASSES_TITLE,
)


def test_the_run_page_titles_the_chart_test_classes_without_validation_classes(
    client, owner, make_run
):
    run = make_run(owner, config={"validation_classes": 0})
    client.force_login(owner)

    html = client.get(reverse("run-detail", args=[run.pk])).content.decode()

    assert f'data-validation-title="{TEST_CLASSES_TITLE}"' in html
    assert f'data-metrics-api-url="/api/runs/{run.pk}/metrics"' in html
    assert html.index("js/chart_tools.js") < html.index("js/run_charts.js")


def test_the_run_page_titles_the_chart_validation_classes_when_held_out(client, owner, make_run):
    run = make_run(owner, config={"validation_classes": 100})
    client.force_login(owner)

    html = client.get(reverse("run-detail", args=[run.pk])).content.decode()

    assert f'data-validation-title="{VALIDATION_CLASSES_TITLE}"' in html


def compare_page(client, runs) -> str:
    return client.get(reverse("compare"), {"runs": [r.pk for r in runs]}).content.decode()


def test_the_compare_page_names_the_classes_and_each_runs_metrics_url(client, owner, make_run):
    a = make_run(owner, name="a")
    b = make_run(owner, name="b")
    client.force_login(owner)

    html = compare_page(client, [a, b])

    assert f'data-validation-title="{TEST_CLASSES_TITLE}"' in html
    blob = html.split('id="compare-data" type="application/json">')[1].split("</script>")[0]
    assert [d["metrics_url"] for d in json.loads(blob)] == [
        f"/api/runs/{a.pk}/metrics",
        f"/api/runs/{b.pk}/metrics",
    ]
    assert html.index("js/chart_tools.js") < html.index("js/compare_charts.js")


def test_the_compare_page_says_when_runs_evaluate_on_different_classes(client, owner, make_run):
    a = make_run(owner, name="a", config={"validation_classes": 0})
    b = make_run(owner, name="b", config={"validation_classes": 100})
    client.force_login(owner)

    assert f'data-validation-title="{COMPARE_MIXED_TITLE}"' in compare_page(client, [a, b])
