"""/api/runs/{id}/try/...: a succeeded run's stored initialization adapted to a task sent in the
request (real networks, real adaptation; only the random task's characters are synthetic)."""

from __future__ import annotations

import base64
import io
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.files.base import ContentFile
from PIL import Image, ImageDraw

from metatrain import adapt
from metatrain.checkpoint import INITIALIZATION_FILE, save_initialization
from metatrain.config import Config, preset
from tests.metatrain.synthetic import synthetic_splits
from webapp.experiments import tryit

URL = "/api/runs"
OMNIGLOT = {"eval_inner_iters": 10}


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    tryit.stored_weights.cache_clear()


def with_initialization(run, weight_seed: int = 11):
    """Store a real initialization of the run's network (as a worker would after training)."""
    config = Config.from_dict(run.config)
    with tempfile.TemporaryDirectory() as tmp:
        save_initialization(adapt.network(config, seed=weight_seed), config, tmp)
        data = (Path(tmp) / INITIALIZATION_FILE).read_bytes()
    run.initialization.save(INITIALIZATION_FILE, ContentFile(data), save=True)
    return run


@pytest.fixture
def sine_run(owner, make_run):
    config = preset("sine").to_dict()
    return with_initialization(make_run(owner, dataset="sine", config=config, seed=3))


@pytest.fixture
def omniglot_run(owner, make_run):
    return with_initialization(make_run(owner, config=OMNIGLOT))


def drawing(shape: int, size: int = 140, fmt: str = "PNG", mode: str = "RGBA") -> str:
    """A canvas-like drawing, black ink on white (or transparent), as a data: URL."""
    img = Image.new(mode, (size, size), (255, 255, 255, 0) if mode == "RGBA" else "white")
    pen = ImageDraw.Draw(img)
    ink = (0, 0, 0, 255) if mode == "RGBA" else "black"
    if shape % 3 == 0:
        pen.line([(20, 20), (120, 120)], fill=ink, width=10)
    elif shape % 3 == 1:
        pen.ellipse([30, 30, 110, 110], outline=ink, width=10)
    else:
        pen.line([(70, 10), (70, 130)], fill=ink, width=10)
    out = io.BytesIO()
    img.save(out, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(out.getvalue()).decode()


def task_body(ways: int = 3, shots: int = 1) -> dict:
    return {
        "support": [[drawing(c) for _ in range(shots)] for c in range(ways)],
        "queries": [drawing(1)],
    }


def test_it_fits_sine_points_from_the_initialization_and_a_random_start(api, sine_run, post_json):
    x = [-4.0, -2.0, 0.0, 1.5, 3.0]
    response = post_json(api, f"{URL}/{sine_run.pk}/try/sine", {"x": x, "y": [1, 0, -1, 0, 1]})

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["steps"] == [0, 1, 32]
    assert len(body["grid"]) == tryit.SINE_GRID_POINTS
    assert body["grid"][0] == -5 and body["grid"][-1] == 5
    assert [len(c) for c in body["initialization"]] == [tryit.SINE_GRID_POINTS] * 3
    # before adaptation: exactly the stored network's output on the grid
    config = Config.from_dict(sine_run.config)
    stored = adapt.network(config, seed=11)
    grid = torch.tensor(body["grid"])[:, None]
    with torch.no_grad():
        expected = stored(grid)[:, 0]
    assert torch.allclose(torch.tensor(body["initialization"][0]), expected, atol=1e-6)
    assert body["random"][0] != body["initialization"][0]
    assert body["initialization"][1] != body["initialization"][2]


def test_a_random_sine_task_has_the_runs_k_points_on_its_curve(api, sine_run):
    response = api.get(f"{URL}/{sine_run.pk}/try/sine/task?seed=4")

    assert response.status_code == 200
    task = response.json()
    assert len(task["x"]) == 10 == len(task["y"])
    a, b = task["amplitude"], task["phase"]
    assert all(
        math.isclose(y, a * math.sin(x + b), abs_tol=1e-5)
        for x, y in zip(task["x"], task["y"], strict=True)
    )
    assert api.get(f"{URL}/{sine_run.pk}/try/sine/task?seed=4").json() == task


def test_it_reports_every_bad_sine_field(api, sine_run, post_json):
    response = post_json(api, f"{URL}/{sine_run.pk}/try/sine", {"x": [9.0, 0.0], "y": [1.0]})

    assert response.status_code == 422
    fields = {e["field"] for e in response.json()["detail"]}
    assert fields == {"x", "y"}


def test_it_classifies_drawn_queries(api, omniglot_run, post_json):
    response = post_json(api, f"{URL}/{omniglot_run.pk}/try/omniglot", task_body(3, 2))

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["ways"], body["shots"], body["inner_iterations"]) == (3, 2, 10)
    for name in ("initialization", "random"):
        (probs,) = body[name]["probabilities"]
        assert len(probs) == 3 and math.isclose(sum(probs), 1, abs_tol=1e-5)
        assert body[name]["predicted"] == [int(np.argmax(probs))]


def test_it_names_each_bad_upload(api, omniglot_run, post_json):
    body = task_body(2)
    gif = io.BytesIO()
    Image.new("L", (28, 28), 255).save(gif, format="GIF")
    body["support"][0][0] = "data:image/gif;base64," + base64.b64encode(gif.getvalue()).decode()
    body["support"][1][0] = "data:image/png;base64,not base64!"
    body["queries"][0] = base64.b64encode(b"\x89PNG\r\n\x1a\n truncated").decode()

    response = post_json(api, f"{URL}/{omniglot_run.pk}/try/omniglot", body)

    assert response.status_code == 422
    errors = {e["field"]: e["message"] for e in response.json()["detail"]}
    assert errors == {
        "support.0.0": "Not a PNG or JPEG image.",
        "support.1.0": "The image is not valid base64.",
        "queries.0": "The image is damaged or truncated.",
    }


def test_it_refuses_more_classes_than_the_network_has(api, omniglot_run, post_json):
    response = post_json(api, f"{URL}/{omniglot_run.pk}/try/omniglot", task_body(6))

    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "support"
    assert "5 outputs" in response.json()["detail"][0]["message"]


def test_only_a_succeeded_run_of_that_kind_can_be_tried(
    api, owner, make_run, omniglot_run, post_json
):
    queued = make_run(owner, status="queued")
    assert post_json(api, f"{URL}/{queued.pk}/try/omniglot", task_body()).status_code == 409
    wrong = post_json(api, f"{URL}/{omniglot_run.pk}/try/sine", {"x": [0.0], "y": [0.0]})
    assert wrong.status_code == 409
    assert wrong.json()["detail"] == "This is a omniglot run, not a sine run."
    assert post_json(api, f"{URL}/999999/try/sine", {"x": [0.0], "y": [0.0]}).status_code == 404


def test_anyone_logged_in_may_try_a_run_but_not_anonymously(
    stranger_api, client, sine_run, post_json
):
    body = {"x": [0.0], "y": [1.0]}
    assert post_json(stranger_api, f"{URL}/{sine_run.pk}/try/sine", body).status_code == 200
    assert post_json(client, f"{URL}/{sine_run.pk}/try/sine", body).status_code == 401


def test_a_second_adaptation_of_the_same_user_is_refused_while_one_runs(
    api, stranger_api, owner, sine_run, post_json
):
    body = {"x": [0.0], "y": [1.0]}
    with tryit.SLOTS.take(owner.pk):
        busy = post_json(api, f"{URL}/{sine_run.pk}/try/sine", body)
        other = post_json(stranger_api, f"{URL}/{sine_run.pk}/try/sine", body)

    assert busy.status_code == 429 and busy["Retry-After"] == "1"
    assert "already have 1 adaptation" in busy.json()["detail"]
    assert other.status_code == 200
    assert post_json(api, f"{URL}/{sine_run.pk}/try/sine", body).status_code == 200


def test_an_adaptation_past_its_time_limit_is_503(api, sine_run, post_json, monkeypatch):
    monkeypatch.setattr(tryit, "TIME_LIMIT_SECONDS", -1.0)
    response = post_json(api, f"{URL}/{sine_run.pk}/try/sine", {"x": [0.0], "y": [1.0]})
    assert response.status_code == 503
    assert "longer than" in response.json()["detail"]


def test_a_random_test_task_can_be_sent_back_to_classify(api, omniglot_run, post_json, monkeypatch):
    splits = synthetic_splits(0, size=28)
    monkeypatch.setattr(tryit, "load_class_splits", lambda config: splits)

    response = api.get(f"{URL}/{omniglot_run.pk}/try/omniglot/task?ways=4&shots=2&seed=1")

    assert response.status_code == 200, response.content
    task = response.json()
    assert [len(s) for s in task["support"]] == [2, 2, 2, 2]
    assert sorted(task["query_labels"]) == [0, 1, 2, 3]
    # the images are the test characters' own pixels, 28x28 binary
    first = Image.open(io.BytesIO(base64.b64decode(task["support"][0][0].split(",")[1])))
    assert first.size == (28, 28) and set(np.unique(np.asarray(first))) <= {0, 255}
    sent = {"support": task["support"], "queries": task["queries"]}
    answer = post_json(api, f"{URL}/{omniglot_run.pk}/try/omniglot", sent)
    assert answer.status_code == 200
    assert len(answer.json()["initialization"]["predicted"]) == 4


def test_a_random_task_needs_the_omniglot_images(api, omniglot_run, monkeypatch, tmp_path):
    monkeypatch.setenv("METATRAIN_DATA", str(tmp_path / "nothing"))
    response = api.get(f"{URL}/{omniglot_run.pk}/try/omniglot/task")
    assert response.status_code == 409
    assert response.json()["detail"] == "The Omniglot images are not available on this server."
    bad = api.get(f"{URL}/{omniglot_run.pk}/try/omniglot/task?ways=9&shots=11")
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["detail"]} == {"ways", "shots"}


def test_trying_changes_nothing_stored(api, omniglot_run, post_json):
    """The try POSTs compute an answer: no row or file is written (so anyone may call them)."""
    from webapp.experiments.models import Experiment, Run

    def state():
        row = Run.objects.filter(pk=omniglot_run.pk).values().get()
        return (Experiment.objects.count(), Run.objects.count(), row)

    before = state()
    files = sorted(p.name for p in Path(omniglot_run.initialization.path).parent.iterdir())

    assert post_json(api, f"{URL}/{omniglot_run.pk}/try/omniglot", task_body()).status_code == 200

    assert state() == before
    assert sorted(p.name for p in Path(omniglot_run.initialization.path).parent.iterdir()) == files
