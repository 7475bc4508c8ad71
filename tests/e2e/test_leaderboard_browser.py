"""The leaderboard in a browser: a configuration's seeds are not sent with the page; opening
its "N seeds" toggle fetches them, each a link to its run (Chromium via Playwright against the
live server; the runs are written as a worker leaves them)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from webapp.experiments.grouping import group_hash
from webapp.experiments.models import Experiment, Run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PASSWORD = "a-long-passphrase-42"
CONFIG = {"dataset": "omniglot", "ways": 5, "shots": 1, "meta_iters": 10}


def _seeds(user, accuracies: list[float]) -> list[Run]:
    experiment = Experiment.objects.create(
        owner=user, name="three seeds", config=CONFIG, seeds=list(range(len(accuracies)))
    )
    return [
        Run.objects.create(
            experiment=experiment,
            seed=seed,
            config={**CONFIG, "seed": seed},
            config_hash="0" * 64,
            group_hash=group_hash({**CONFIG, "seed": seed}),
            dataset="omniglot",
            split="paper",
            algorithm="reptile",
            ways=5,
            shots=1,
            transductive=True,
            status=Run.Status.SUCCEEDED,
            test_accuracy=accuracy,
            test_ci95=0.01,
            test_tasks=100,
        )
        for seed, accuracy in enumerate(accuracies)
    ]


def test_opening_a_rows_seeds_fetches_them_as_links_to_their_runs(live_server, browser_page):
    page = browser_page
    base = live_server.url
    user = get_user_model().objects.create_user("ada", password=PASSWORD)
    runs = _seeds(user, [0.91, 0.93, 0.95])
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", "ada")
    page.fill("#id_password", PASSWORD)
    page.click("form button[type=submit]")
    page.wait_for_url(f"{base}/")

    page.goto(f"{base}/leaderboard/")
    board = page.locator("#omniglot-paper-5way-1shot-transductive")
    assert "93.00 %" in board.inner_text()  # the mean of the three seeds
    assert page.locator(f'a[href="/runs/{runs[0].pk}/"]').count() == 0  # not sent with the page

    board.locator("details.seed-runs summary").click()
    page.wait_for_selector(f'details.seed-runs a[href="/runs/{runs[0].pk}/"]')
    listed = board.locator("details.seed-runs").inner_text()
    assert [f"#{run.pk} seed {run.seed}" in listed for run in runs] == [True, True, True]
    assert "list them" not in listed  # the no-JavaScript link was replaced

    page.click(f'details.seed-runs a[href="/runs/{runs[2].pk}/"]')
    page.wait_for_url(f"{base}/runs/{runs[2].pk}/")
    assert not page.errors
