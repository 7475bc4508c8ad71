"""Every page fits a 390-px phone screen, and a run page follows the final evaluation live
(Chromium via Playwright against the live server; no worker needed: the runs are written as a
worker would write them). A wide child, such as the run page's loader snippet in its <pre>,
scrolls inside its box instead of widening the page."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from webapp.experiments.models import Evaluation, Experiment, Run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PHONE = {"width": 390, "height": 844}
PASSWORD = "a-long-passphrase-42"


def _runs(user) -> tuple[Run, Run]:
    experiment = Experiment.objects.create(
        owner=user, name="a rather long experiment name " * 3, config={"dataset": "sine"}, seeds=[0]
    )
    fields = {"config": {"dataset": "sine", "seed": 0}, "config_hash": "0" * 64}
    cancelled = Run.objects.create(
        experiment=experiment,
        seed=0,
        dataset="sine",
        algorithm="reptile",
        status=Run.Status.CANCELLED,
        status_reason="cancelled at iteration 30000; checkpoint kept " + "x" * 300,
        checkpoint_file="runs/1/checkpoints/attempt-1-iter-30000.pt",
        checkpoint_iteration=30000,
        **fields,
    )
    done = Run.objects.create(
        experiment=experiment,
        seed=1,
        dataset="sine",
        algorithm="reptile",
        status=Run.Status.SUCCEEDED,
        initialization="runs/2/attempt-1/initialization.safetensors",
        test_loss_before=4.39,
        test_loss_after=0.17,
        **fields,
    )
    Evaluation.objects.create(
        run=done,
        split="test",
        iteration=30000,
        tasks=1000,
        extra={"loss_before": 4.39, "loss_after": 0.17},
    )
    return cancelled, done


def _evaluating(experiment) -> Run:
    return Run.objects.create(
        experiment=experiment,
        seed=2,
        dataset="sine",
        algorithm="reptile",
        config={"dataset": "sine", "seed": 2},
        config_hash="0" * 64,
        status=Run.Status.RUNNING,
        iteration=100,
        total_iterations=100,
        phase=Run.Phase.EVALUATING,
        eval_tasks_done=10,
        eval_tasks_total=1000,
        started_at=timezone.now(),
        heartbeat_at=timezone.now(),
    )


def test_every_page_fits_a_390_px_phone_and_a_run_page_follows_its_evaluation(
    live_server, browser_page, plotly_served
):
    page = browser_page
    base = live_server.url
    user = get_user_model().objects.create_user("ada", password=PASSWORD)
    cancelled, done = _runs(user)
    page.set_viewport_size(PHONE)
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", "ada")
    page.fill("#id_password", PASSWORD)
    page.click("form button[type=submit]")
    page.wait_for_url(f"{base}/")

    paths = [
        "/",
        "/experiments/",
        f"/experiments/{done.experiment_id}/",
        f"/runs/{cancelled.pk}/",
        f"/runs/{done.pk}/",
        "/experiments/new/",
        "/datasets/",
        "/leaderboard/",
        f"/compare/?runs={cancelled.pk},{done.pk}",
        "/workers/",
        "/accounts/profile/",
        f"/runs/{done.pk}/cancel/",  # the 405 page
    ]
    widths = {}
    for path in paths:
        page.goto(base + path)
        widths[path] = page.evaluate("document.documentElement.scrollWidth")
    assert all(width <= PHONE["width"] for width in widths.values()), widths

    # A running run in its final evaluation: the page shows that phase and follows it (tasks
    # done, rate, ETA), its heartbeat with the time zone, and the Evaluations table's new rows.
    evaluating = _evaluating(done.experiment)
    page.goto(f"{base}/runs/{evaluating.pk}/")
    assert page.is_visible("#run-eval-phase")
    Run.objects.filter(pk=evaluating.pk).update(
        eval_tasks_done=750, eval_tasks_per_second=25.0, heartbeat_at=timezone.now()
    )
    Evaluation.objects.create(
        run=evaluating,
        split="validation",
        iteration=50,
        tasks=7,
        extra={"loss_before": 3.0, "loss_after": 0.5},
    )
    page.wait_for_function("document.getElementById('run-eval-done').textContent === '750'")
    assert page.inner_text("#run-eval-eta") == "10 s"  # 250 tasks left at 25 a second
    assert page.inner_text("#run-heartbeat").endswith("UTC")
    page.wait_for_selector("#run-evaluation-rows tr")
    assert "loss 3 → 0.5" in page.inner_text("#run-evaluation-rows")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert not page.errors
