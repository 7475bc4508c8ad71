"""A run cancelled during its final evaluation keeps usable weights: its checkpoint downloads as
an initialization, and "evaluate now" evaluates it on a worker through the same claim and
fencing as any run (train_run called in this process, real tiny training, real files)."""

from __future__ import annotations

import json
import math

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse
from safetensors.torch import load

from webapp.experiments import services
from webapp.experiments.errors import ServiceError
from webapp.experiments.models import Evaluation, Run, RunAttempt
from webapp.experiments.reporter import DbReporter
from webapp.experiments.tasks import train_run

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("one_torch_thread", "work_dirs", "broker_down"),
]


@pytest.fixture
def sine_run(owner, tiny_sine) -> Run:
    experiment = services.create_experiment(owner, name="sine", config=tiny_sine, seeds=[3])
    return experiment.runs.get()


def _cancel_when_the_evaluation_begins(monkeypatch) -> None:
    """The owner presses Cancel as the final evaluation starts (the real flag, read by the
    reporter's next poll)."""
    original = DbReporter.begin_evaluation

    def begin_evaluation(self, total_tasks):
        original(self, total_tasks)
        services.request_cancel(Run.objects.get(pk=self.run.pk))
        self._last_poll = -math.inf  # read the flag at the next poll instead of in 2 s

    monkeypatch.setattr(DbReporter, "begin_evaluation", begin_evaluation)


@pytest.mark.slow
def test_a_run_cancelled_in_its_final_evaluation_downloads_and_evaluates_its_weights(
    sine_run, client, owner, monkeypatch
):
    _cancel_when_the_evaluation_begins(monkeypatch)
    assert train_run(sine_run.pk) == Run.Status.CANCELLED
    monkeypatch.undo()
    run = Run.objects.get(pk=sine_run.pk)
    assert run.phase == Run.Phase.EVALUATING and run.eval_tasks_total == 6
    assert run.checkpoint_iteration == 20 and run.checkpoint_file and not run.initialization

    client.force_login(owner)
    page = client.get(run.get_absolute_url()).content.decode()
    assert "Evaluate now" in page and "initialization.safetensors (checkpoint)" in page
    weights = client.get(reverse("run-download", args=[run.pk, "initialization.safetensors"]))
    config = client.get(reverse("run-download", args=[run.pk, "config.json"]))
    assert weights.status_code == 200 and config.status_code == 200
    assert f"run-{run.pk}-sine-seed3-initialization.safetensors" in weights["Content-Disposition"]
    tensors = load(weights.content)
    assert tensors and all(t.dtype.is_floating_point for t in tensors.values())
    doc = json.loads(config.content)
    assert doc["architecture"]["name"] == "sine_mlp"
    assert doc["run"]["id"] == run.pk and doc["run"]["status"] == "cancelled"
    assert doc["config"]["data_dir"] is None

    response = client.post(reverse("run-evaluate", args=[run.pk]))
    assert response.status_code == 302
    run.refresh_from_db()
    assert (run.status, run.evaluate_only) == (Run.Status.QUEUED, True)

    assert train_run(run.pk) == Run.Status.SUCCEEDED
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED and not run.evaluate_only
    assert run.iteration == 20 and run.attempts == 2
    assert (run.eval_tasks_done, run.eval_tasks_total) == (6, 6)
    assert run.test_loss_before is not None and run.test_loss_after is not None
    final = Evaluation.objects.get(run=run, kind=Evaluation.Kind.FINAL)
    assert final.tasks == 6 and final.extra["loss_after"] == pytest.approx(run.test_loss_after)
    # The evaluated weights are the checkpoint's, the ones downloaded above.
    with run.initialization.open("rb") as fh:
        stored = load(fh.read())
    assert all((stored[k] == tensors[k]).all() for k in tensors)
    # The training was not resumed: the second attempt started at the checkpoint and added
    # no training points past it.
    assert RunAttempt.objects.get(run=run, number=2).start_iteration == 20
    assert not run.metric_points.filter(step__gt=20).exists()


def test_only_a_stopped_run_with_a_checkpoint_can_be_evaluated_now(sine_run, client, owner):
    with pytest.raises(ServiceError, match="only a cancelled or failed run with a checkpoint"):
        services.evaluate_now(sine_run)  # queued

    Run.objects.filter(pk=sine_run.pk).update(status=Run.Status.CANCELLED)
    sine_run.refresh_from_db()
    assert not services.can_evaluate_now(sine_run)  # no checkpoint
    client.force_login(owner)
    client.post(reverse("run-evaluate", args=[sine_run.pk]))
    assert Run.objects.get(pk=sine_run.pk).status == Run.Status.CANCELLED

    sine_run.checkpoint_file.save("ckpt.pt", ContentFile(b"x"), save=True)
    Run.objects.filter(pk=sine_run.pk).update(status=Run.Status.SUCCEEDED)
    sine_run.refresh_from_db()
    with pytest.raises(ServiceError):
        services.evaluate_now(sine_run)


def test_a_stranger_cannot_evaluate_someone_elses_run(sine_run, client, stranger):
    sine_run.checkpoint_file.save("ckpt.pt", ContentFile(b"x"), save=True)
    Run.objects.filter(pk=sine_run.pk).update(status=Run.Status.CANCELLED)
    client.force_login(stranger)

    response = client.post(reverse("run-evaluate", args=[sine_run.pk]))

    assert response.status_code == 403
    assert Run.objects.get(pk=sine_run.pk).status == Run.Status.CANCELLED


def test_a_cancelled_run_whose_checkpoint_is_gone_is_404_not_500(sine_run, client, owner):
    Run.objects.filter(pk=sine_run.pk).update(
        status=Run.Status.CANCELLED, checkpoint_file="runs/1/checkpoints/missing.pt"
    )
    client.force_login(owner)

    response = client.get(reverse("run-download", args=[sine_run.pk, "config.json"]))

    assert response.status_code == 404
