"""The charts in a real browser (Chromium via Playwright) against the live server, without a
worker: runs and their metric points are written straight into the test database.

One browser, three pages: a finished 100,000-iteration run (bounded traces drawn with WebGL,
the min/max band, smoothing remembered across a reload, log-scale y, a zoom that fetches the
window's finer points, the periodic evaluation titled after its test classes and sharing the
training charts' x range), a running run whose ETA keeps counting down while its iteration
stands still (a validation), and the compare page with the same controls.

The small pure functions of static/js/chart_tools.js are checked here too, in the page that
loads them: this project runs no JavaScript test runner.
"""

from __future__ import annotations

import math
import re

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.utils import timezone

from webapp.experiments.chart_titles import TEST_CLASSES_TITLE
from webapp.experiments.models import Experiment, MetricPoint, Run
from webapp.experiments.views import runs as run_views

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LONG = 100_000
CONFIG = {"dataset": "omniglot", "ways": 5, "shots": 1, "validation_classes": 0, "seed": 0}


def make_run(owner, name: str, **fields) -> Run:
    experiment = Experiment.objects.create(owner=owner, name=name, config=CONFIG, seeds=[0])
    defaults = {
        "status": Run.Status.SUCCEEDED,
        "algorithm": "reptile",
        "dataset": "omniglot",
        "split": "paper",
        "ways": 5,
        "shots": 1,
        "config_hash": "0" * 64,
    }
    return Run.objects.create(
        experiment=experiment, seed=0, config=CONFIG, **{**defaults, **fields}
    )


def add_points(run: Run, name: str, steps, value) -> None:
    MetricPoint.objects.bulk_create(
        MetricPoint(run=run, name=name, step=s, value=value(s)) for s in steps
    )


def add_long_series(run: Run, name: str, last: int, first: int = 1) -> None:
    """Noisy points at steps first..last in one INSERT ... SELECT: 100,000 model objects take
    seconds."""
    table = MetricPoint._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""INSERT INTO {table} (run_id, name, step, value)
                WITH RECURSIVE s(x) AS (SELECT %s UNION ALL SELECT x + 1 FROM s WHERE x < %s)
                SELECT %s, %s, x, 1.0 + ((x * 7919) %% 101) / 100.0 + 100.0 / x FROM s""",
            [first, last, run.pk, name],
        )


def log_in(page, base: str, user) -> None:
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME]
    page.context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": cookie.value, "url": base}]
    )


def traces(page, chart_id: str) -> list[dict]:
    """Each trace of a chart: its type, role, x range and length (not the points themselves)."""
    return page.evaluate(
        """id => document.getElementById(id).data.map(t => ({
            type: t.type || 'scatter', role: (t.meta || {}).role, n: t.x.length,
            x0: t.x[0], x1: t.x[t.x.length - 1], y: t.y.slice(0, 50),
            step: t.x.length > 1 ? (t.x[t.x.length - 1] - t.x[0]) / (t.x.length - 1) : null,
        }))""",
        chart_id,
    )


def layout(page, chart_id: str) -> dict:
    return page.evaluate(
        """id => { const l = document.getElementById(id).layout;
                  return {title: l.title.text, x: l.xaxis.range, ytype: l.yaxis.type}; }""",
        chart_id,
    )


def by_role(chart: list[dict], role: str) -> dict:
    return next(t for t in chart if t["role"] == role)


def test_charts_stay_bounded_smooth_zoom_and_say_what_they_measure(
    live_server, browser_page, plotly_served, django_user_model, monkeypatch
):
    monkeypatch.setattr(run_views, "POLL_MS", 300)  # the running run's page polls 10x faster
    page = browser_page
    base = live_server.url
    owner = django_user_model.objects.create_user("owner")
    long = make_run(owner, "long run", iteration=LONG, total_iterations=LONG)
    add_long_series(long, "inner_loss", LONG)
    assert MetricPoint.objects.filter(run=long).count() == LONG
    add_points(long, "validation_accuracy", [50_000], lambda s: 0.9)
    add_points(long, "validation_ci95", [50_000], lambda s: 0.01)
    log_in(page, base, owner)

    page.goto(f"{base}/runs/{long.pk}/")
    page.wait_for_selector("#charts[data-loaded=true] #chart-validation_accuracy .main-svg")

    # The pure functions the pages share.
    tools = page.evaluate(
        """() => { const T = window.ChartTools; return {
            ema: T.ema([1, 2, null, 3], 0.5), raw: T.ema([1, 2], 0),
            one: T.sharedRange([[100]]), two: T.sharedRange([[1, 5], [3, 9], []]),
            band: T.band({steps: [1, 2], values: [1, 2], min: [0, 1], max: [2, 3]}),
            flat: T.band({steps: [1], values: [1], min: [1], max: [1]}),
            zoom: T.zoomWindow({'xaxis.range[0]': 10.2, 'xaxis.range[1]': 20.7}),
            reset: T.zoomWindow({'xaxis.autorange': true}), other: T.zoomWindow({autosize: true}),
        }; }"""
    )
    assert tools["ema"] == pytest.approx([1, 5 / 3, None, 2.4285714], abs=1e-6)
    assert tools["raw"] == [1, 2]
    assert tools["one"] == [0, 105] and tools["two"] == [1, 9]
    assert tools["band"] == {"x": [1, 2], "lower": [0, 1], "upper": [2, 3]}
    assert tools["flat"] is None
    assert tools["zoom"] == {"from": 10, "to": 21, "range": [10.2, 20.7]}
    assert tools["reset"] == {"whole": True} and tools["other"] is None

    # 100,000 points: at most 2,000 drawn per trace, with WebGL, and the bucket's min/max band.
    loss = traces(page, "chart-inner_loss")
    assert all(t["n"] <= 2000 for t in loss), loss
    raw = by_role(loss, "raw")
    assert raw["type"] == "scattergl" and raw["x0"] == 1 and raw["x1"] == LONG
    assert by_role(loss, "band-lower")["type"] == "scattergl"

    # The periodic evaluation ran on test classes and says so; its one point shares the
    # training chart's x range instead of getting 49,999..50,001.
    val = layout(page, "chart-validation_accuracy")
    assert val["title"].startswith(TEST_CLASSES_TITLE)
    assert val["x"] == [1, LONG] == layout(page, "chart-inner_loss")["x"]

    # Smoothing: the raw curve stays (faint) and a smoothed one is drawn; the setting is kept
    # (the compare page below opens with it).
    page.fill(".chart-smoothing", "0.9")
    page.dispatch_event(".chart-smoothing", "input")
    loss = traces(page, "chart-inner_loss")
    smoothed, raw = by_role(loss, "smoothed"), by_role(loss, "raw")
    assert smoothed["n"] == raw["n"] and smoothed["y"] != raw["y"]

    # Log-scale y.
    page.check(".chart-log")
    assert layout(page, "chart-inner_loss")["ytype"] == "log"

    # Zoom by dragging with the mouse: the window selected is fetched from the API at about one
    # point per pixel, finer than the whole series' buckets, and shown on every chart.
    whole_step = by_role(traces(page, "chart-inner_loss"), "raw")["step"]
    plot = page.locator("#chart-inner_loss .nsewdrag").bounding_box()
    y = plot["y"] + plot["height"] / 2
    with page.expect_request(re.compile(r"/api/runs/\d+/metrics\?")) as request:
        page.mouse.move(plot["x"] + plot["width"] * 0.3, y)
        page.mouse.down()
        page.mouse.move(plot["x"] + plot["width"] * 0.35, y, steps=4)
        page.mouse.move(plot["x"] + plot["width"] * 0.4, y, steps=4)
        page.mouse.up()
    page.wait_for_function("() => document.getElementById('charts').dataset.zoom")
    x0, x1 = layout(page, "chart-inner_loss")["x"]
    assert 20_000 < x0 < x1 < 50_000
    url = request.value.url
    assert f"from_step={math.floor(x0)}&to_step={math.ceil(x1)}&" in url
    assert int(re.search(r"max_points=(\d+)", url).group(1)) <= 2000
    zoomed = by_role(traces(page, "chart-inner_loss"), "raw")
    assert math.floor(x0) <= zoomed["x0"] and zoomed["x1"] <= math.ceil(x1)
    assert zoomed["step"] < whole_step / 2
    assert layout(page, "chart-validation_accuracy")["x"] == [x0, x1]

    # A double click goes back to the whole series.
    page.mouse.dblclick(plot["x"] + plot["width"] / 2, y)
    page.wait_for_selector("#charts[data-zoom='']")
    assert by_role(traces(page, "chart-inner_loss"), "raw")["x1"] == LONG
    assert layout(page, "chart-validation_accuracy")["x"] == [1, LONG]

    # A running run standing still at one iteration (validating): the ETA keeps counting down.
    running = make_run(
        owner,
        "running",
        status=Run.Status.RUNNING,
        iteration=50,
        total_iterations=100,
        seconds_per_iteration=2.0,
        started_at=timezone.now(),
        heartbeat_at=timezone.now(),
    )
    add_points(running, "inner_loss", range(1, 51), lambda s: 1 / s)
    page.goto(f"{base}/runs/{running.pk}/")
    page.wait_for_selector("#charts[data-loaded=true]")
    first = page.inner_text("#run-eta")
    page.wait_for_function(
        "first => document.getElementById('run-eta').textContent !== first", arg=first
    )
    assert first == "1 min 40 s"
    assert re.fullmatch(r"1 min 3\d s", page.inner_text("#run-eta"))

    # Points arriving live are appended; past 2,000 held points a series is fetched whole
    # (bucketed) again instead of drawing them all.
    add_long_series(running, "inner_loss", 3000, first=51)
    page.wait_for_function(
        """() => document.getElementById('chart-inner_loss').data
                 .some(t => t.meta.role === 'raw' && t.x[t.x.length - 1] === 3000)"""
    )
    live = traces(page, "chart-inner_loss")
    assert all(t["n"] <= 2000 for t in live), [(t["role"], t["n"]) for t in live]
    assert by_role(live, "band-lower")["x1"] == 3000  # bucketed by the server

    # The compare page: the same controls, opened with the settings kept (smoothing 0.9, log y).
    page.goto(f"{base}/compare/?runs={long.pk}&runs={running.pk}")
    page.wait_for_selector("#compare-inner_loss .main-svg")
    assert page.input_value(".chart-smoothing") == "0.9"
    compared = traces(page, "compare-inner_loss")
    assert [t["role"] for t in compared].count("smoothed") == 2
    assert all(t["n"] <= 2000 for t in compared)
    assert layout(page, "compare-inner_loss")["ytype"] == "log"
    page.uncheck(".chart-log")
    assert layout(page, "compare-inner_loss")["ytype"] == "linear"
    with page.expect_request(re.compile(rf"/api/runs/{running.pk}/metrics\?.*from_step=10&")):
        page.evaluate(
            "Plotly.relayout('compare-inner_loss', {'xaxis.range[0]': 10, 'xaxis.range[1]': 20})"
        )
    page.wait_for_selector("#compare-charts[data-zoom='10-20']")
    assert all(t["x0"] >= 10 and t["x1"] <= 20 for t in traces(page, "compare-inner_loss"))
    assert page.errors == []
