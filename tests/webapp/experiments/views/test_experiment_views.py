"""The experiment pages: the form (new and clone), the experiment page, delete."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from metatrain import PRESETS
from webapp.experiments.models import Experiment, Run

NEW = reverse("experiment-new")


def form_data(**overrides) -> dict:
    """A valid submission: the sine preset (no data needed), short, two seeds."""
    data = {
        "name": "sine warm-up",
        "description": "",
        "preset": "sine",
        "seeds": "1, 2",
        "queue": "cpu",
        "meta_iters": "50",
    }
    data.update(overrides)
    return data


def field_errors(response) -> dict:
    return response.context["form"].errors


# --- the form ------------------------------------------------------------------------------


def test_it_sends_anonymous_users_to_log_in(client):
    response = client.get(NEW)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_the_form_shows_every_config_field_with_the_librarys_help(client, owner):
    client.force_login(owner)

    response = client.get(NEW)

    assert response.status_code == 200
    form = response.context["form"]
    for name in ("inner_lr", "meta_step_final", "keep_adam_state", "split", "sine_points"):
        assert name in form.fields
    assert "seed" not in form.fields  # seeds have their own field
    assert form.fields["inner_lr"].help_text.startswith("Inner-loop learning rate")
    assert [c for c, _ in form.fields["algorithm"].choices] == ["", "reptile", "fomaml"]
    assert [c for c, _ in form.fields["split"].choices] == ["", "paper", "lake"]


def test_the_page_carries_the_presets_for_the_prefill_script(client, owner):
    client.force_login(owner)

    response = client.get(NEW)

    blob = response.content.decode().split('id="preset-data" type="application/json">')[1]
    data = json.loads(blob.split("</script>")[0])
    assert data["presets"]["omniglot-20way-1shot"]["ways"] == 20
    assert data["presets"]["sine"]["inner_lr"] == PRESETS["sine"]["inner_lr"]
    assert "seed" not in data["presets"]["sine"]


def test_a_valid_form_saves_the_experiment_and_one_queued_run_per_seed(client, owner):
    client.force_login(owner)

    response = client.post(NEW, form_data(seeds="3, 1, 2"))

    experiment = Experiment.objects.get()
    assert response.status_code == 302
    assert response["Location"] == experiment.get_absolute_url()
    assert experiment.owner == owner
    assert experiment.preset == "sine"
    assert experiment.queue == "cpu"
    runs = list(experiment.runs.order_by("seed"))
    assert [r.seed for r in runs] == [1, 2, 3]
    assert {r.status for r in runs} == {Run.Status.QUEUED}
    assert [r.config["seed"] for r in runs] == [1, 2, 3]


def test_a_single_seed_goes_straight_to_its_run_page(client, owner):
    client.force_login(owner)

    response = client.post(NEW, form_data(seeds="7"))

    assert response["Location"] == Run.objects.get().get_absolute_url()


def test_empty_fields_take_the_presets_values_and_given_ones_override_them(client, owner):
    client.force_login(owner)

    client.post(NEW, form_data(inner_lr="", meta_step="0.3"))

    config = Experiment.objects.get().config
    assert config["inner_lr"] == PRESETS["sine"]["inner_lr"]
    assert config["inner_optimizer"] == PRESETS["sine"]["inner_optimizer"]
    assert config["meta_step"] == 0.3
    assert config["meta_iters"] == 50
    assert "seed" not in config


def test_a_boolean_select_overrides_the_preset(client, owner):
    client.force_login(owner)

    client.post(NEW, form_data(keep_adam_state="true", transductive="false"))

    config = Experiment.objects.get().config
    assert config["keep_adam_state"] is True
    assert config["transductive"] is False


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"inner_lr": "-0.1"}, "inner_lr"),
        ({"inner_lr": "NaN"}, "inner_lr"),
        ({"meta_step": "inf"}, "meta_step"),
        ({"preset": "omniglot-5way-1shot", "ways": "500"}, "ways"),
        ({"preset": "omniglot-5way-1shot", "shots": "20"}, "shots"),
        ({"preset": "no-such-preset"}, "preset"),
        ({"seeds": "a,b"}, "seeds"),
        ({"seeds": "1, 1"}, "seeds"),
        ({"seeds": ""}, "seeds"),
        ({"seeds": "-1"}, "seeds"),
        ({"ways": "2.5"}, "ways"),
        ({"algorithm": "maml"}, "algorithm"),
        ({"model": "omniglot_conv"}, "model"),
        ({"name": ""}, "name"),
    ],
)
def test_each_bad_value_is_an_error_on_its_field_and_nothing_is_saved(
    client, owner, overrides, field
):
    client.force_login(owner)

    response = client.post(NEW, form_data(**overrides))

    assert response.status_code == 200
    assert field in field_errors(response), field_errors(response)
    assert "Nothing was saved" in response.content.decode()
    assert Experiment.objects.count() == 0
    assert Run.objects.count() == 0


def test_a_library_error_message_reaches_the_page(client, owner):
    client.force_login(owner)

    response = client.post(NEW, form_data(preset="omniglot-5way-1shot", ways="500"))

    assert "423 test classes" in field_errors(response)["ways"][0]


def test_missing_omniglot_data_is_an_error_on_dataset_saying_where_to_put_it(
    client, owner, tmp_path, monkeypatch
):
    monkeypatch.setenv("METATRAIN_DATA", str(tmp_path))
    client.force_login(owner)

    response = client.post(NEW, form_data(preset="omniglot-5way-1shot"))

    message = field_errors(response)["dataset"][0]
    assert str(tmp_path / "omniglot") in message
    assert "images_background" in message
    assert Experiment.objects.count() == 0


def test_a_run_is_saved_and_stays_queued_when_the_broker_is_down(
    client, owner, monkeypatch, django_capture_on_commit_callbacks
):
    from kombu.exceptions import OperationalError

    from webapp.celery import app

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting: Connection refused.")

    monkeypatch.setattr(app, "send_task", broker_down)
    client.force_login(owner)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(NEW, form_data(seeds="5"))

    assert len(callbacks) == 1  # the dispatch was attempted after commit
    assert response.status_code == 302
    run = Run.objects.get()
    assert run.status == Run.Status.QUEUED
    assert run.dispatched_at is None  # the periodic dispatcher sends it later


# --- clone ---------------------------------------------------------------------------------


def test_clone_prefills_the_form_from_the_experiment(client, owner, stranger, make_experiment):
    source = make_experiment(
        owner,
        name="omni",
        config={"dataset": "omniglot", "inner_lr": 0.0007, "transductive": False},
        seeds=[4, 5],
    )
    client.force_login(stranger)  # anyone who can see it may clone it

    response = client.get(reverse("experiment-clone", args=[source.pk]))

    form = response.context["form"]
    assert response.status_code == 200
    assert form["name"].value() == "omni (copy)"
    assert form["seeds"].value() == "4, 5"
    assert form["inner_lr"].value() == 0.0007
    assert form["transductive"].value() == "false"
    assert 'value="0.0007"' in response.content.decode()


def test_saving_a_clone_makes_a_new_experiment_owned_by_the_cloner(
    client, owner, stranger, make_experiment
):
    source = make_experiment(owner, name="omni", seeds=[0])
    client.force_login(stranger)
    data = form_data(name="mine now", preset="", **{"dataset": "sine", "model": "sine_mlp"})

    client.post(reverse("experiment-clone", args=[source.pk]), data)

    clone = Experiment.objects.exclude(pk=source.pk).get()
    assert clone.owner == stranger
    assert clone.cloned_from == source
    assert clone.config["dataset"] == "sine"


def test_clone_of_a_missing_experiment_is_404(client, owner):
    client.force_login(owner)

    assert client.get(reverse("experiment-clone", args=[999])).status_code == 404


# --- detail and delete ---------------------------------------------------------------------


def test_the_experiment_page_lists_its_runs_and_config(client, owner, stranger, make_experiment):
    experiment = make_experiment(owner, name="five seeds", seeds=[0, 1])
    client.force_login(stranger)

    response = client.get(experiment.get_absolute_url())

    body = response.content.decode()
    assert response.status_code == 200
    for run in experiment.runs.all():
        assert run.get_absolute_url() in body
    assert "inner_lr" in body
    assert response.context["can_change"] is False
    assert reverse("experiment-delete", args=[experiment.pk]) not in body


def test_the_owner_deletes_an_experiment_with_its_runs(client, owner, make_experiment):
    experiment = make_experiment(owner, seeds=[0, 1])
    client.force_login(owner)

    response = client.post(reverse("experiment-delete", args=[experiment.pk]))

    assert response.status_code == 302
    assert not Experiment.objects.exists()
    assert not Run.objects.exists()


def test_staff_may_delete_anyones_experiment(client, owner, staff, make_experiment):
    experiment = make_experiment(owner)
    client.force_login(staff)

    client.post(reverse("experiment-delete", args=[experiment.pk]))

    assert not Experiment.objects.exists()


def test_a_stranger_may_not_delete_an_experiment(client, owner, stranger, make_experiment):
    experiment = make_experiment(owner)
    client.force_login(stranger)

    response = client.post(reverse("experiment-delete", args=[experiment.pk]))

    assert response.status_code == 403
    assert Experiment.objects.filter(pk=experiment.pk).exists()


def test_an_anonymous_delete_is_sent_to_log_in(client, owner, make_experiment):
    experiment = make_experiment(owner)

    response = client.post(reverse("experiment-delete", args=[experiment.pk]))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    assert Experiment.objects.filter(pk=experiment.pk).exists()


def test_delete_only_answers_post(client, owner, make_experiment):
    experiment = make_experiment(owner)
    client.force_login(owner)

    response = client.get(reverse("experiment-delete", args=[experiment.pk]))

    assert response.status_code == 405
    assert Experiment.objects.filter(pk=experiment.pk).exists()


def test_delete_is_refused_while_a_run_is_running(client, owner, make_experiment):
    experiment = make_experiment(owner)
    experiment.runs.update(status=Run.Status.RUNNING)
    client.force_login(owner)

    response = client.post(reverse("experiment-delete", args=[experiment.pk]), follow=True)

    assert Experiment.objects.filter(pk=experiment.pk).exists()
    assert "Cancel the running runs first" in response.content.decode()


def test_delete_needs_a_csrf_token(owner, make_experiment):
    from django.test import Client

    experiment = make_experiment(owner)
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)

    response = client.post(reverse("experiment-delete", args=[experiment.pk]))

    assert response.status_code == 403
    assert Experiment.objects.filter(pk=experiment.pk).exists()
