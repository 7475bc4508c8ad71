"""The dashboard in a real browser (Chromium via Playwright) against the live server and a real
Celery worker: what a researcher does on a first visit, end to end.

Log in, define a sine experiment through the form (a bad value first: a field error, nothing
saved), watch its curves grow live, cancel it; then train a tiny Omniglot run to the end, find
it on the leaderboard, download its initialization and load it with the snippet the page shows.

Set E2E_ARTIFACTS_DIR to keep the screenshot of the run page somewhere other than tmp_path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from webapp.experiments.models import Experiment, Run
from webapp.experiments.views.runs import load_snippet

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PASSWORD = "a-long-passphrase-42"


def chart_points(page, key: str) -> int:
    return int(page.get_attribute(f"#chart-{key}", "data-points") or 0)


def test_a_researchers_first_session(
    live_server, celery_worker, wait_for_run, browser_page, plotly_served, tmp_path, monkeypatch
):
    page = browser_page
    base = live_server.url
    get_user_model().objects.create_user("ada", password=PASSWORD)
    artifacts = Path(os.environ.get("E2E_ARTIFACTS_DIR") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)

    # Every page but login and sign-up asks for a login first.
    page.goto(f"{base}/experiments/new/")
    assert "/accounts/login/" in page.url
    page.fill("#id_username", "ada")
    page.fill("#id_password", PASSWORD)
    page.click("form button[type=submit]")
    page.wait_for_url(f"{base}/experiments/new/")

    # The preset select fills the fields (JavaScript reading the presets' JSON blob).
    page.select_option("#id_preset", "sine")
    assert page.input_value("#id_inner_lr") == "0.02"
    assert page.input_value("#id_inner_optimizer") == "sgd"

    # A bad value: an error on its field, nothing saved.
    page.fill("#id_name", "sine in the browser")
    page.fill("#id_seeds", "0")
    page.fill("#id_inner_lr", "-1")
    page.click("#experiment-form button[type=submit]")
    error = page.locator(".field.has-error", has=page.locator("#id_inner_lr"))
    assert "must be positive" in error.inner_text()
    assert "Nothing was saved" in page.content()
    assert not Experiment.objects.exists()

    # Fixed: saved and queued; the worker picks it up and the chart grows live.
    page.fill("#id_inner_lr", "0.02")
    page.fill("#id_meta_iters", "200000")  # long: it is cancelled below
    page.click("#experiment-form button[type=submit]")
    page.wait_for_url(f"{base}/runs/*/")
    sine = Run.objects.get(experiment__name="sine in the browser")
    assert page.url == f"{base}/runs/{sine.pk}/"
    page.wait_for_function(
        "() => (document.getElementById('chart-inner_loss') || {dataset: {}}).dataset.points > 0"
    )
    first = chart_points(page, "inner_loss")
    page.wait_for_function(
        f"() => Number(document.getElementById('chart-inner_loss').dataset.points) > {first}",
        timeout=15_000,
    )
    assert chart_points(page, "inner_loss") > first
    assert page.inner_text("#run-status") == "Running"
    assert int(page.inner_text("#run-iteration")) > 0
    page.wait_for_timeout(500)  # let Plotly finish drawing before the picture
    page.screenshot(path=str(artifacts / "run-page.png"), full_page=True)

    # Cancel (after confirming): the worker stops at its next poll; the page shows it.
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel-form button")
    page.wait_for_function(
        "() => document.getElementById('run-status').textContent.trim() === 'Cancelled'",
        timeout=30_000,
    )
    wait_for_run(sine.pk, {Run.Status.CANCELLED}, timeout=5, worker=celery_worker)

    # A tiny Omniglot run, trained to the end, lands on the leaderboard.
    page.goto(f"{base}/experiments/new/")
    page.select_option("#id_preset", "omniglot-5way-1shot")
    page.fill("#id_name", "tiny omniglot")
    page.fill("#id_seeds", "0")
    for field, value in {
        "meta_iters": "5",
        "meta_batch": "1",
        "inner_iters": "1",
        "eval_inner_iters": "2",
        "final_eval_tasks": "10",
        "validation_interval": "0",
        "checkpoint_interval": "5",
    }.items():
        page.fill(f"#id_{field}", value)
    page.click("#experiment-form button[type=submit]")
    page.wait_for_url(f"{base}/runs/*/")
    omniglot = Run.objects.get(experiment__name="tiny omniglot")
    wait_for_run(omniglot.pk, {Run.Status.SUCCEEDED}, timeout=120, worker=celery_worker)
    # The live page reloads itself once the run is finished: results and downloads appear.
    page.wait_for_selector("#download-initialization", timeout=30_000)

    page.click("nav >> text=Leaderboard")
    board = page.locator("#omniglot-paper-5way-1shot-transductive")
    assert f"#{omniglot.pk}" in board.inner_text()
    assert "Reptile paper" in board.inner_text()

    # Download the initialization and its config, and load them as the run page says.
    page.goto(f"{base}/runs/{omniglot.pk}/")
    folder = tmp_path / "downloaded"
    folder.mkdir()
    with page.expect_download() as download:
        page.click("#download-initialization")
    download.value.save_as(folder / download.value.suggested_filename)
    with page.expect_download() as download:
        page.click("text=config.json")
    download.value.save_as(folder / download.value.suggested_filename)
    monkeypatch.chdir(folder)
    namespace: dict = {}
    snippet = page.inner_text("code.load-snippet")  # with this run's download names
    assert snippet == load_snippet(omniglot)
    exec(snippet, namespace)  # noqa: S102 (our own snippet, as a user would run it)
    weights = namespace["weights"]
    assert namespace["meta"]["config"]["dataset"] == "omniglot"
    assert len(weights) > 0 and all(t.numel() > 0 for t in weights.values())
    assert page.errors == []
