"""Trying a run's initialization in a real browser (Chromium via Playwright) against the live
server: the sine figure (a task's points, fits after 0, 1 and 32 steps, a point added by
clicking) and the Omniglot panel classifying a drawn character.

The runs are succeeded runs written to the test database with real initializations that
metatrain trains here for a few iterations (no worker: nothing is queued).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.test import Client

import metatrain
from metatrain.checkpoint import INITIALIZATION_FILE
from metatrain.config import preset
from metatrain.data import omniglot_available
from webapp.experiments.models import Experiment, Run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TINY = {
    "meta_iters": 4,
    "validation_interval": 0,
    "final_eval_tasks": 1,
    "checkpoint_interval": 1000,
}
SINE = {**TINY, "meta_iters": 30}
OMNIGLOT = {
    **TINY,
    "ways": 5,
    "shots": 1,
    "meta_batch": 2,
    "inner_iters": 2,
    "eval_inner_iters": 10,
}


@pytest.fixture
def one_torch_thread():
    """The machine's cores are shared (with the browser, too): one torch thread trains these
    tiny runs in a fraction of the time two contending threads take. The server's adaptations
    set one thread themselves (webapp.experiments.tryit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trained_run(owner, config: metatrain.Config, seed: int = 0) -> Run:
    """A succeeded run holding the initialization metatrain trains for `config`."""
    with tempfile.TemporaryDirectory() as tmp:
        metatrain.train(config, tmp)
        weights = (Path(tmp) / INITIALIZATION_FILE).read_bytes()
    stored = {k: v for k, v in config.to_dict().items() if k != "data_dir"}
    experiment = Experiment.objects.create(owner=owner, name=config.dataset, config=stored)
    run = Run.objects.create(
        experiment=experiment,
        seed=seed,
        config=stored,
        config_hash=config.config_hash(),
        status=Run.Status.SUCCEEDED,
        dataset=config.dataset,
        split=config.split if config.dataset == "omniglot" else "",
        algorithm=config.algorithm,
        ways=config.ways if config.is_classification else None,
        shots=config.shots if config.is_classification else None,
        transductive=config.transductive,
        iteration=config.meta_iters,
        total_iterations=config.meta_iters,
    )
    run.initialization.save(INITIALIZATION_FILE, ContentFile(weights), save=True)
    return run


def log_in(page, base: str, user) -> None:
    """The browser holds a session of `user` (the login form is test_browser.py's business)."""
    client = Client()
    client.force_login(user)
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    page.context.add_cookies(
        [{"name": django_settings.SESSION_COOKIE_NAME, "value": cookie, "url": base}]
    )


def stroke(page, selector: str, points: list[tuple[float, float]]) -> None:
    """Draw a line through `points` (fractions of the box) with the mouse."""
    box_el = page.locator(selector)
    box_el.scroll_into_view_if_needed()
    box = box_el.bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=4)
    page.mouse.up()


def classify(page, results: int) -> None:
    """Click Classify and wait for the `results`-th answer (failing with the panel's errors)."""
    page.click("#tryit-classify")
    page.wait_for_function(
        f"""() => document.getElementById('tryit-omniglot').dataset.results === '{results}'
        || !document.getElementById('tryit-omniglot-errors').hidden"""
    )
    assert page.locator("#tryit-omniglot-errors").is_hidden(), page.inner_text(
        "#tryit-omniglot-errors"
    )


SHAPES = [
    [(0.2, 0.2), (0.8, 0.8)],
    [(0.5, 0.1), (0.5, 0.9)],
    [(0.1, 0.5), (0.9, 0.5)],
    [(0.2, 0.8), (0.5, 0.2), (0.8, 0.8)],
    [(0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8), (0.2, 0.2)],
]


# Page coordinates of a spot on a sine plot at least 30 px from every one of the random task's
# points (the "K points" trace).
FREE_SPOT = """(id) => {
  const div = document.getElementById(id);
  const xa = div._fullLayout.xaxis, ya = div._fullLayout.yaxis;
  const known = div.data.find((t) => t.name === "K points");
  const px = known.x.map((x) => xa.l2p(x)), py = known.y.map((y) => ya.l2p(y));
  const box = div.getBoundingClientRect();
  for (const fy of [0.2, 0.8, 0.5, 0.1, 0.9, 0.35, 0.65]) {
    for (const fx of [0.5, 0.3, 0.7, 0.1, 0.9]) {
      const x = xa._length * fx, y = ya._length * fy;
      if (px.every((p, i) => Math.hypot(p - x, py[i] - y) > 30)) {
        return [box.left + xa._offset + x, box.top + ya._offset + y];
      }
    }
  }
  throw new Error("no free spot on the plot");
}"""


def test_trying_a_sine_and_an_omniglot_initialization(
    live_server,
    browser_page,  # noqa: F811
    plotly_served,  # noqa: F811
    settings,
    tmp_path,
    one_torch_thread,
):
    if not omniglot_available():
        pytest.skip("no Omniglot images at METATRAIN_DATA")
    settings.MEDIA_ROOT = tmp_path / "media"
    page, base = browser_page, live_server.url
    user = get_user_model().objects.create_user("ada", password=None)
    sine = trained_run(user, preset("sine", **SINE))
    omniglot = trained_run(user, metatrain.Config.from_dict({"dataset": "omniglot", **OMNIGLOT}))

    log_in(page, base, user)
    page.goto(f"{base}/runs/{sine.pk}/")

    # Sine: a random task's K points and both networks' fits, drawn as the page opens.
    page.wait_for_function("() => document.getElementById('tryit-sine').dataset.fits === '1'")
    assert "10 points" in page.inner_text("#tryit-sine-status")
    curves = page.evaluate(
        "() => document.getElementById('tryit-sine-trained').data.map(t => t.name)"
    )
    assert curves == ["task", "before adaptation", "after 1 step", "after 32 steps", "K points"]
    # A click on the plot away from the task's points adds an 11th point (a click within 12 px
    # of one picks that point up instead), and the fits are computed again.
    page.mouse.click(*page.evaluate(FREE_SPOT, "tryit-sine-trained"))
    page.wait_for_function("() => document.getElementById('tryit-sine').dataset.fits === '2'")
    assert "11 points" in page.inner_text("#tryit-sine-status")

    # Omniglot: draw one example of each of five characters and a query like the fourth.
    page.goto(f"{base}/runs/{omniglot.pk}/")
    cells = page.locator("#tryit-support canvas")
    assert cells.count() == 5
    for i, shape in enumerate(SHAPES):
        stroke(page, f"#tryit-support .tryit-row:nth-child({i + 1}) canvas", shape)
    stroke(page, "#tryit-query", SHAPES[3])
    classify(page, 1)
    rows = page.locator("#tryit-result tbody tr")
    assert rows.count() == 5
    assert page.locator("#tryit-result tr.tryit-predicted").count() == 1
    assert "Predicted class" in page.inner_text("#tryit-omniglot-status")

    # One click fills the panel with a random task from the test characters instead.
    page.click("#tryit-random")
    page.wait_for_function(
        "() => document.getElementById('tryit-omniglot-status').textContent.includes('random task')"
    )
    classify(page, 2)
    assert "(right)" in page.inner_text("#tryit-omniglot-status") or "(wrong" in page.inner_text(
        "#tryit-omniglot-status"
    )
    assert page.errors == []
