"""The sweep pages: the form (count before saving, limit, invalid points), the sweep page
(progress, configurations with mean ± CI, best marked, chart data), cancel and clone."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from webapp.experiments.models import Run, Sweep
from webapp.experiments.sweeps import service

from ...conftest import SMALL_CONFIG

pytestmark = pytest.mark.django_db

FORM = {
    "name": "lr sweep",
    "preset": "",
    "base_config": json.dumps(SMALL_CONFIG),
    "space": "inner_lr = 0.001, 0.01\ninner_iters = 1, 2, 3",
    "method": "grid",
    "parallel": "2",
    "sampler_seed": "0",
    "seeds": "0, 1",
    "queue": "any",
}


def test_counting_runs_shows_the_plan_and_saves_nothing(client, owner):
    client.force_login(owner)
    response = client.post(reverse("sweep-new"), {**FORM, "preview": "1"})
    body = response.content.decode()
    assert "6 configurations × 2 seeds = 12 runs" in body
    assert not Sweep.objects.exists()


def test_saving_queues_the_first_configurations_and_opens_the_sweep(client, owner):
    client.force_login(owner)
    response = client.post(reverse("sweep-new"), {**FORM, "save": "1"})
    sweep = Sweep.objects.get()
    assert response.status_code == 302 and response["Location"] == sweep.get_absolute_url()
    assert sweep.experiments.count() == 2 and sweep.trials == 6


def test_the_form_refuses_more_runs_than_the_limit(client, owner, settings):
    settings.SWEEP_MAX_RUNS = 10
    client.force_login(owner)
    body = client.post(reverse("sweep-new"), {**FORM, "save": "1"}).content.decode()
    assert "= 12 runs; the limit is 10 (SWEEP_MAX_RUNS)" in body
    assert not Sweep.objects.exists()


def test_the_form_names_an_invalid_point_by_field_and_value(client, owner):
    client.force_login(owner)
    form = {**FORM, "space": "inner_lr = 0.01, -0.5", "save": "1"}
    body = client.post(reverse("sweep-new"), form).content.decode()
    assert "inner_lr = -0.5" in body and "Nothing was saved" in body
    assert not Sweep.objects.exists()


def test_the_experiment_forms_values_become_the_sweeps_base(client, owner):
    client.force_login(owner)
    response = client.post(
        reverse("sweep-from-experiment"),
        {
            "name": "from form",
            "preset": "omniglot-5way-1shot",
            "seeds": "3, 4",
            "queue": "any",
            "meta_iters": "50",
        },
    )
    form = response.context["form"]
    assert form.initial["preset"] == "omniglot-5way-1shot"
    assert json.loads(form.initial["base_config"]) == {"meta_iters": 50}
    assert form.initial["seeds"] == "3, 4"


def _finished_sweep(owner):
    sweep = service.create_sweep(
        owner,
        name="s",
        config=dict(SMALL_CONFIG),
        space={"inner_lr": {"values": [0.001, 0.01]}},
        method="grid",
        seeds=[0, 1],
        parallel=2,
    )
    low, high = sweep.experiments.order_by("id")
    for experiment, accuracies in ((low, (0.50, 0.54)), (high, (0.80, 0.80))):
        for run, acc in zip(experiment.runs.order_by("seed"), accuracies, strict=True):
            Run.objects.filter(pk=run.pk).update(status=Run.Status.SUCCEEDED, test_accuracy=acc)
    return sweep, low, high


def test_the_sweep_page_ranks_configurations_with_mean_and_ci_and_marks_the_best(
    client, owner, stranger
):
    sweep, low, high = _finished_sweep(owner)
    client.force_login(stranger)
    response = client.get(sweep.get_absolute_url())
    body = response.content.decode()
    table = body.split('id="sweep-configurations"')[1].split("</table>")[0]
    rows = table.split("<tr")[2:]
    assert f"experiment #{high.pk}" in rows[0] and 'class="best"' in rows[0]
    assert "80.00 %" in rows[0] and "52.00 %" in rows[1]
    # Two seeds: t(0.975, 1) * s / sqrt(2) with s = 0.0282843 -> 25.41 %.
    assert "± 25.41 %" in rows[1]
    assert "4 of 4</strong> runs" in body and "Succeeded: 4" in body
    data = response.context["chart_data"]
    assert [f["name"] for f in data["fields"]] == ["inner_lr"]
    assert [c["params"]["inner_lr"] for c in data["configurations"]] == [0.01, 0.001]
    assert "sweep-parcoords" in body and "js/sweep_charts.js" in body
    assert 'id="sweep-cancel"' not in body  # a stranger cannot cancel


def test_a_stranger_cannot_cancel_a_sweep(client, owner, stranger):
    sweep, _, _ = _finished_sweep(owner)
    client.force_login(stranger)
    assert client.post(reverse("sweep-cancel", args=[sweep.pk])).status_code == 403
    assert Sweep.objects.get().status == Sweep.Status.ACTIVE


def test_the_owner_cancels_the_whole_sweep(client, owner):
    sweep = service.create_sweep(
        owner,
        name="s",
        config=dict(SMALL_CONFIG),
        space={"inner_iters": {"values": [1, 2]}},
        method="grid",
        seeds=[0],
        parallel=2,
    )
    client.force_login(owner)
    response = client.post(reverse("sweep-cancel", args=[sweep.pk]), follow=True)
    assert "2 queued runs cancelled" in response.content.decode()
    assert set(Run.objects.values_list("status", flat=True)) == {Run.Status.CANCELLED}


def test_clone_prefills_the_form_and_saves_a_new_sweep(client, owner, stranger):
    sweep, _, _ = _finished_sweep(owner)
    client.force_login(stranger)
    url = reverse("sweep-clone", args=[sweep.pk])
    form = client.get(url).context["form"]
    assert form.initial["space"] == "inner_lr = 0.001, 0.01"
    data = {k: ("" if v is None else v) for k, v in form.initial.items()}
    response = client.post(url, {**data, "save": "1"})
    assert response.status_code == 302
    clone = Sweep.objects.exclude(pk=sweep.pk).get()
    assert clone.owner == stranger and clone.cloned_from == sweep
    assert clone.space == sweep.space and clone.base_config == sweep.base_config


def test_the_sweep_list_shows_sweeps(client, owner):
    sweep, _, _ = _finished_sweep(owner)
    client.force_login(owner)
    assert sweep.get_absolute_url() in client.get(reverse("sweep-list")).content.decode()


def test_a_sweep_from_an_experiment_on_an_upload_is_refused_not_silently_changed(
    client, owner, make_ready_dataset
):
    dataset = make_ready_dataset(owner)
    client.force_login(owner)
    response = client.post(
        reverse("sweep-from-experiment"),
        {
            "name": "on upload",
            "preset": "miniimagenet-5way-1shot",
            "seeds": "0",
            "queue": "any",
            "user_dataset": str(dataset.pk),
            "meta_iters": "10",
            "train_shots": "5",
        },
    )
    form = response.context["form"]
    assert "cannot train on an uploaded dataset" in str(form.errors.get("user_dataset"))
    assert not Sweep.objects.exists()
