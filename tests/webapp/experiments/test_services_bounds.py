"""The service refuses, with a field error and before writing anything, what the database
would refuse: integers beyond the 32-bit columns (Run.seed, ways, shots and the worker's
counters), NUL characters and over-long text (PostgreSQL raises on both: a 500)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from webapp.experiments import services
from webapp.experiments.models import Experiment, Run

SINE = {
    "dataset": "sine",
    "model": "sine_mlp",
    "meta_iters": 10,
    "final_eval_tasks": 10,
    "validation_interval": 0,
}
BIG = 2**31


def create(owner, **kw):
    args = {"name": "bounds", "config": dict(SINE), "seeds": [0], **kw}
    return services.create_experiment(owner, **args)


@pytest.mark.parametrize("seeds", [[BIG], [0, 2**63], [-1]])
def test_it_refuses_seeds_outside_the_run_seed_column(owner, seeds):
    with pytest.raises(services.ServiceError) as err:
        create(owner, seeds=seeds)

    assert err.value.field == "seeds"
    assert "2,147,483,647" in str(err.value)
    assert not Experiment.objects.exists()


@pytest.mark.parametrize("field", ["sine_points", "meta_iters", "split_seed", "ways"])
@pytest.mark.parametrize("value", [BIG, -BIG, 2**70])
def test_it_refuses_config_integers_beyond_32_bits(owner, field, value):
    with pytest.raises(services.ServiceError) as err:
        create(owner, config={**SINE, field: value})

    assert err.value.field == field
    assert not Run.objects.exists()


def test_the_largest_32_bit_seed_is_accepted(owner):
    experiment = create(owner, seeds=[BIG - 1])

    assert experiment.runs.get().seed == BIG - 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "a\x00b"),
        ("name", "x" * 201),
        ("name", "   "),
        ("description", "x" * 5001),
        ("description", "\x00"),
        ("preset", "p" * 65),
    ],
)
def test_it_refuses_text_the_database_would_refuse(owner, field, value):
    with pytest.raises(services.ServiceError) as err:
        create(owner, **{field: value})

    assert err.value.field == field
    assert not Experiment.objects.exists()


def test_it_refuses_nul_in_a_config_string(owner):
    with pytest.raises(services.ServiceError) as err:
        create(owner, config={**SINE, "algorithm": "reptile\x00"})

    assert err.value.field == "algorithm"


def test_the_form_shows_a_too_large_integer_on_its_field_and_saves_nothing(client, owner):
    client.force_login(owner)

    response = client.post(
        reverse("experiment-new"),
        {"name": "big", "preset": "sine", "seeds": "0", "queue": "any", "sine_points": str(2**40)},
    )

    assert response.status_code == 200
    assert "2,147,483,647" in response.context["form"].errors["sine_points"][0]
    assert not Experiment.objects.exists()


def test_the_form_shows_a_too_large_seed_on_the_seeds_field(client, owner):
    client.force_login(owner)

    response = client.post(
        reverse("experiment-new"),
        {"name": "big", "preset": "sine", "seeds": f"0, {2**40}", "queue": "any"},
    )

    assert response.status_code == 200
    assert "seeds" in response.context["form"].errors
    assert not Run.objects.exists()


def test_the_form_refuses_a_description_longer_than_the_api_allows(client, owner):
    client.force_login(owner)

    response = client.post(
        reverse("experiment-new"),
        {"name": "long", "preset": "sine", "seeds": "0", "queue": "any", "description": "x" * 5001},
    )

    assert response.status_code == 200
    assert "description" in response.context["form"].errors
