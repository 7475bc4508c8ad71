"""The one validation path (webapp.experiments.validation): every error of a request at once,
in the library's own words, on the field at fault; presets merged in one place; the data
checked on this server; the per-run meta-iteration cap."""

from __future__ import annotations

import pytest

from metatrain import PRESETS
from webapp.experiments import services
from webapp.experiments.errors import ValidationFailed
from webapp.experiments.models import Experiment
from webapp.experiments.validation import (
    base_config,
    config_errors,
    merge_preset,
    validate_experiment,
)

OMNIGLOT = "omniglot-5way-1shot"


def fields(errors) -> dict:
    return dict(errors)


def test_merge_preset_takes_the_presets_values_then_the_users():
    merged = merge_preset("sine", {"inner_lr": 0.5})

    assert merged["inner_lr"] == 0.5
    assert merged["meta_iters"] == PRESETS["sine"]["meta_iters"]
    assert "seed" not in merged


def test_without_a_preset_the_library_defaults_fill_the_config():
    assert base_config("")["ways"] == 5 and base_config("no-such-preset") == base_config("")


def test_it_reports_a_negative_learning_rate_and_too_many_ways_together():
    config, errors = config_errors(base_config(OMNIGLOT), {"inner_lr": -1.0, "ways": 5000})

    assert config is None
    assert set(fields(errors)) == {"inner_lr", "ways"}
    assert "positive" in fields(errors)["inner_lr"]
    assert "423 test classes" in fields(errors)["ways"]


def test_it_reports_type_errors_range_errors_and_unknown_fields_in_one_pass():
    overrides = {
        "ways": "five",
        "shots": 0,
        "warp_speed": 9,
        "seed": 3,
        "data_dir": "/etc",
        "meta_step": -2,
        "algorithm": "maml",
    }

    _, errors = config_errors(base_config(OMNIGLOT), overrides)

    assert set(fields(errors)) == set(overrides)
    assert "integer" in fields(errors)["ways"]
    assert "Unknown field" in fields(errors)["warp_speed"]


def test_a_value_valid_with_the_users_other_values_is_not_reported():
    """500 ways is too many for Omniglot but not for an image folder: checked together with the
    user's dataset, not alone against the preset's."""
    config, errors = config_errors(base_config(OMNIGLOT), {"dataset": "imagefolder", "ways": 500})

    assert errors == [] and config is not None and config.ways == 500


def test_a_rule_between_fields_is_reported_on_the_field_the_library_names():
    _, errors = config_errors(base_config(OMNIGLOT), {"dataset": "sine"})

    assert list(fields(errors)) == ["model"]
    assert "sine_mlp" in fields(errors)["model"]


def test_a_valid_config_has_no_errors_and_keeps_the_users_values():
    config, errors = config_errors(base_config("sine"), {"meta_iters": 7}, seed=4)

    assert errors == []
    assert (config.meta_iters, config.seed, config.inner_lr) == (7, 4, PRESETS["sine"]["inner_lr"])


def test_every_paper_preset_passes_the_default_per_run_cap(settings):
    assert max(p["meta_iters"] for p in PRESETS.values()) <= settings.QUOTA_MAX_META_ITERS_PER_RUN
    for name in PRESETS:
        config, errors = config_errors(base_config(name), {})
        assert errors == [] and config is not None, name


def test_the_per_run_cap_refuses_two_billion_meta_iterations(settings):
    settings.QUOTA_MAX_META_ITERS_PER_RUN = 1_000_000

    _, errors = config_errors(base_config("sine"), {"meta_iters": 2**31 - 1, "inner_lr": -1.0})

    message = fields(errors)["meta_iters"]
    assert "QUOTA_MAX_META_ITERS_PER_RUN = 1,000,000" in message
    assert "2,147,483,647" in message
    assert "inner_lr" in fields(errors)  # reported together


def test_the_per_run_cap_also_holds_a_presets_value(settings):
    settings.QUOTA_MAX_META_ITERS_PER_RUN = 50_000

    _, errors = config_errors(base_config(OMNIGLOT), {})

    assert "100,000" in fields(errors)["meta_iters"]


def test_a_per_run_cap_of_zero_means_no_cap(settings):
    settings.QUOTA_MAX_META_ITERS_PER_RUN = 0

    config, errors = config_errors(base_config("sine"), {"meta_iters": 2**31 - 1})

    assert errors == [] and config.meta_iters == 2**31 - 1


def test_the_cap_applies_to_staff_too(staff, settings):
    settings.QUOTA_MAX_META_ITERS_PER_RUN = 100

    with pytest.raises(ValidationFailed) as err:
        services.create_experiment(
            staff, name="long", preset="sine", config={"meta_iters": 101}, seeds=[0]
        )

    assert err.value.field == "meta_iters"
    assert not Experiment.objects.exists()


def test_validate_experiment_reports_top_level_and_config_errors_together(owner):
    with pytest.raises(ValidationFailed) as err:
        validate_experiment(
            owner,
            name="",
            description="x" * 5001,
            preset=OMNIGLOT,
            config={"inner_lr": -1.0, "ways": 5000},
            seeds=[1, 1],
            queue="tpu",
        )

    assert set(fields(err.value.errors)) == {
        "name",
        "description",
        "seeds",
        "queue",
        "inner_lr",
        "ways",
    }


def test_an_unknown_preset_is_reported_and_the_values_are_still_checked(owner):
    with pytest.raises(ValidationFailed) as err:
        validate_experiment(
            owner, name="x", preset="omniglot-99way", config={"inner_lr": 0.0}, seeds=[0]
        )

    errors = fields(err.value.errors)
    assert set(errors) == {"preset", "inner_lr"}
    assert "omniglot-5way-1shot" in errors["preset"]  # says which presets exist


@pytest.mark.parametrize(
    ("value", "problem"),
    [(None, "list"), ("0, 1", "list"), ([], "at least one"), ([True], "whole numbers")],
)
def test_any_seeds_value_is_refused_with_a_message_not_an_exception(owner, value, problem):
    with pytest.raises(ValidationFailed) as err:
        validate_experiment(owner, name="x", preset="sine", config={}, seeds=value)

    assert problem in fields(err.value.errors)["seeds"]


def test_missing_omniglot_data_is_refused_by_the_service_itself(owner, tmp_path, monkeypatch):
    monkeypatch.setenv("METATRAIN_DATA", str(tmp_path))

    with pytest.raises(ValidationFailed) as err:
        services.create_experiment(owner, name="x", preset=OMNIGLOT, config={}, seeds=[0])

    message = fields(err.value.errors)["dataset"]
    assert str(tmp_path / "omniglot") in message and "images_background" in message
    assert not Experiment.objects.exists()


def test_sine_needs_no_data_on_the_server(owner, tmp_path, monkeypatch):
    monkeypatch.setenv("METATRAIN_DATA", str(tmp_path))

    experiment = services.create_experiment(
        owner, name="x", preset="sine", config={"meta_iters": 5}, seeds=[0]
    )

    assert experiment.runs.count() == 1


def test_every_fit_problem_of_an_uploaded_dataset_is_reported(owner, make_ready_dataset):
    dataset = make_ready_dataset(owner, val_classes=4, min_class_images=6)
    config = {
        "dataset": "imagefolder",
        "model": "omniglot_conv",
        "image_size": 28,
        "augment_rotations": False,
        "ways": 5,
        "shots": 5,
        "queries": 2,
        "train_shots": 7,
    }

    with pytest.raises(ValidationFailed) as err:
        validate_experiment(owner, name="x", config=config, seeds=[0], user_dataset=dataset.pk)

    assert set(fields(err.value.errors)) == {"ways", "shots", "train_shots"}


def test_a_single_error_reads_as_before(owner):
    """Code written for one ServiceError (field, message) still reads the first error."""
    with pytest.raises(services.ServiceError) as err:
        services.create_experiment(owner, name="x", preset="sine", config={"ways": 1}, seeds=[0])

    assert err.value.field == "ways" and str(err.value).startswith("must be at least 2")
