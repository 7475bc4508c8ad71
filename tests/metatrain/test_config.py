"""Config: validation per field, presets, hashing, data-dependent checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from metatrain import PRESETS, Config, ConfigError, preset
from metatrain.config import validate_against_data
from metatrain.data import ClassSplits, TensorClassDataset


def _error(**changes) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Config.from_dict({**Config().to_dict(), **changes})
    return info.value


def test_defaults_are_valid_and_round_trip_through_json():
    cfg = Config()
    data = json.loads(json.dumps(cfg.to_dict()))
    assert Config.from_dict(data) == cfg


def test_error_message_names_the_field():
    err = _error(inner_lr=-1.0)
    assert err.field == "inner_lr"
    assert str(err).startswith("inner_lr: ")
    assert isinstance(err, ValueError)


def test_it_rejects_an_unknown_key():
    with pytest.raises(ConfigError) as info:
        Config.from_dict({"learning_rate": 0.1})
    assert info.value.field == "learning_rate"
    assert "unknown" in info.value.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ways", True),  # bool is not an int here
        ("ways", 5.0),
        ("ways", "5"),
        ("meta_iters", False),
        ("inner_lr", True),
        ("inner_lr", "0.1"),
        ("transductive", 1),
        ("augment_rotations", "yes"),
        ("dataset", 3),
        ("data_dir", 7),
    ],
)
def test_it_rejects_wrong_types(field, value):
    assert _error(**{field: value}).field == field


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("field", ["inner_lr", "meta_step", "meta_step_final", "adam_beta2"])
def test_it_rejects_non_finite_floats(field, value):
    err = _error(**{field: value})
    assert err.field == field
    assert "finite" in err.message


def test_an_integer_is_accepted_for_a_float_field():
    cfg = Config.from_dict({"meta_step": 1})
    assert cfg.meta_step == 1.0 and isinstance(cfg.meta_step, float)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("inner_lr", 0.0),
        ("inner_lr", -0.001),
        ("meta_step", 0.0),
        ("meta_step_final", -0.1),
        ("adam_beta2", 1.0),
        ("inner_iters", 0),
        ("inner_batch", 0),
        ("meta_batch", 0),
        ("meta_iters", 0),
        ("eval_inner_batch", 0),
        ("eval_inner_iters", -1),
        ("checkpoint_interval", 0),
        ("validation_tasks", 0),
        ("final_eval_tasks", 0),
        ("validation_interval", -1),
        ("ways", 1),
        ("shots", 0),
        ("queries", 0),
        ("train_shots", 0),
        ("seed", -1),
        ("image_size", 2),
        ("dataset", "cifar"),
        ("algorithm", "maml"),
        ("inner_optimizer", "rmsprop"),
        ("split", "random"),
    ],
)
def test_it_rejects_out_of_range_values(field, value):
    assert _error(**{field: value}).field == field


def test_meta_step_final_may_exceed_meta_step():
    cfg = Config(meta_step=0.5, meta_step_final=1.0)
    assert cfg.meta_step_final == 1.0


def test_it_rejects_more_ways_than_the_split_has_test_classes():
    assert _error(ways=424, split="paper").field == "ways"
    # The Lake split has 659 evaluation characters: 424 ways are fine there.
    assert Config(ways=424, split="lake").ways == 424
    assert _error(ways=660, split="lake").field == "ways"


def test_it_counts_training_classes_after_rotation():
    # 1,200 - 1,100 validation = 100 characters: 400 classes with rotations, 100 without.
    assert Config(ways=300, validation_classes=1100, augment_rotations=True).ways == 300
    err = _error(ways=300, validation_classes=1100, augment_rotations=False)
    assert err.field == "ways"


def test_it_rejects_validation_classes_that_cannot_form_a_task():
    assert _error(validation_classes=3, ways=5).field == "validation_classes"
    assert _error(validation_classes=1200).field == "validation_classes"


def test_it_rejects_more_shots_and_queries_than_an_omniglot_class_holds():
    err = _error(shots=15, queries=6)
    assert err.field == "shots"
    assert "20" in err.message
    assert Config(shots=15, queries=5).shots == 15


def test_it_counts_the_fomaml_tail_in_train_shots():
    assert Config(algorithm="reptile", train_shots=18, fomaml_tail_shots=5).train_shots == 18
    err = _error(algorithm="fomaml", train_shots=18, fomaml_tail_shots=5)
    assert err.field == "train_shots"
    assert "fomaml_tail_shots" in err.message


@pytest.mark.parametrize(
    ("dataset", "model"),
    [("omniglot", "sine_mlp"), ("sine", "omniglot_conv"), ("imagefolder", "sine_mlp")],
)
def test_it_rejects_a_model_that_does_not_fit_the_dataset(dataset, model):
    assert _error(dataset=dataset, model=model).field == "model"


def test_replace_validates():
    with pytest.raises(ConfigError) as info:
        Config().replace(ways=0)
    assert info.value.field == "ways"
    with pytest.raises(ConfigError):
        Config().replace(nonsense=1)
    assert Config().replace(ways=20).ways == 20


def test_every_field_has_help_text():
    names = set(Config().to_dict())
    assert set(Config.FIELD_HELP) == names
    assert all(len(text) > 10 for text in Config.FIELD_HELP.values())


# --- presets ----------------------------------------------------------------------------


def test_presets_hold_the_papers_appendix_a_values():
    o1 = PRESETS["omniglot-5way-1shot"]
    assert (o1["ways"], o1["shots"], o1["train_shots"]) == (5, 1, 10)
    assert (o1["inner_batch"], o1["inner_iters"], o1["inner_lr"]) == (10, 5, 0.001)
    assert (o1["meta_step"], o1["meta_step_final"], o1["meta_batch"]) == (1.0, 0.0, 5)
    assert (o1["meta_iters"], o1["eval_inner_batch"], o1["eval_inner_iters"]) == (100_000, 5, 50)
    assert o1["split"] == "paper" and o1["transductive"] is True
    assert o1["final_eval_tasks"] == 10_000
    assert o1["checkpoint_interval"] == 500
    assert (o1["validation_interval"], o1["validation_tasks"]) == (1000, 200)
    assert PRESETS["omniglot-5way-5shot"] == {**o1, "shots": 5}

    o20 = PRESETS["omniglot-20way-1shot"]
    assert (o20["ways"], o20["inner_batch"], o20["inner_iters"], o20["meta_batch"]) == (
        20,
        20,
        10,
        5,
    )
    assert (o20["meta_iters"], o20["eval_inner_batch"], o20["eval_inner_iters"]) == (
        200_000,
        10,
        50,
    )
    assert (o20["inner_lr"], o20["train_shots"]) == (0.0005, 10)
    assert PRESETS["omniglot-20way-5shot"] == {**o20, "shots": 5}

    m1 = PRESETS["miniimagenet-5way-1shot"]
    assert (m1["dataset"], m1["model"], m1["image_size"]) == (
        "imagefolder",
        "miniimagenet_conv",
        84,
    )
    assert (m1["inner_batch"], m1["inner_iters"], m1["meta_batch"], m1["meta_iters"]) == (
        10,
        8,
        5,
        100_000,
    )
    assert (m1["eval_inner_batch"], m1["eval_inner_iters"], m1["inner_lr"]) == (5, 50, 0.001)
    assert m1["train_shots"] == 15
    m5 = PRESETS["miniimagenet-5way-5shot"]
    assert (m5["shots"], m5["eval_inner_batch"]) == (5, 15)

    sine = PRESETS["sine"]
    assert (sine["model"], sine["inner_optimizer"], sine["inner_lr"]) == ("sine_mlp", "sgd", 0.02)


def test_every_preset_is_a_complete_valid_config():
    for name, values in PRESETS.items():
        assert set(values) == set(Config().to_dict()), name
        assert Config.from_dict(values).to_dict() == values


def test_preset_applies_overrides_and_rejects_unknown_names():
    cfg = preset("omniglot-5way-1shot", meta_iters=10, seed=3)
    assert (cfg.meta_iters, cfg.seed, cfg.ways) == (10, 3, 5)
    with pytest.raises(ConfigError) as info:
        preset("omniglot-7way")
    assert info.value.field == "preset"
    with pytest.raises(ConfigError):
        preset("omniglot-5way-1shot", ways=0)


# --- hashing ----------------------------------------------------------------------------


LEGACY_VERSIONS = {"split_version": 1, "sine_version": 1}


def _recorded_before_versions(config: Config) -> dict:
    """``config`` as a run recorded before the version fields existed stored it."""
    return {k: v for k, v in config.to_dict().items() if k not in LEGACY_VERSIONS}


def test_hash_is_pinned_so_resumable_runs_keep_matching():
    # If this changes, existing checkpoints no longer resume: change it only on purpose.
    assert Config(**LEGACY_VERSIONS).config_hash() == _PINNED_DEFAULT_HASH


def test_a_presets_hash_is_what_it_was_before_data_dir_was_left_out():
    # Recorded before config_hash hashed data_dir as None: configs without a data_dir keep
    # their hash, so their checkpoints and recorded runs keep matching.
    old_5way = preset("omniglot-5way-1shot", **LEGACY_VERSIONS)
    assert old_5way.config_hash() == _PINNED_OMNIGLOT_5WAY_1SHOT_HASH
    assert preset("sine", **LEGACY_VERSIONS).config_hash() == _PINNED_SINE_HASH


def test_a_config_recorded_before_the_version_fields_reads_as_version_1_with_its_hash():
    stored = _recorded_before_versions(preset("omniglot-5way-1shot"))
    old = Config.from_dict(stored)
    assert (old.split_version, old.sine_version) == (1, 1)
    assert old.config_hash() == _PINNED_OMNIGLOT_5WAY_1SHOT_HASH
    assert old.hash_matches(_PINNED_OMNIGLOT_5WAY_1SHOT_HASH)


def test_new_configs_get_the_current_versions_and_a_hash_of_their_own():
    new = preset("omniglot-5way-1shot")
    assert (new.split_version, new.sine_version) == (2, 2)
    assert (Config().split_version, Config().sine_version) == (2, 2)
    assert new.config_hash() != _PINNED_OMNIGLOT_5WAY_1SHOT_HASH
    assert not new.hash_matches(_PINNED_OMNIGLOT_5WAY_1SHOT_HASH)
    assert new.replace(split_version=1).config_hash() != new.config_hash()
    assert Config.from_dict(new.to_dict()) == new


@pytest.mark.parametrize("field", ["split_version", "sine_version"])
@pytest.mark.parametrize("value", [0, 3])
def test_it_rejects_an_unknown_version(field, value):
    assert _error(**{field: value}).field == field


def test_data_dir_is_where_the_files_are_not_what_was_trained():
    here, there = Config(data_dir="/data/omniglot"), Config(data_dir="/mnt/cache/omniglot")
    assert here.config_hash() == there.config_hash() == Config().config_hash()
    # The old rule, kept to recognise checkpoints written with it, saw data_dir.
    assert here.legacy_config_hash() != there.legacy_config_hash()
    assert Config().legacy_config_hash() == Config().config_hash()
    assert there.hash_matches(here.config_hash()) and there.hash_matches(there.legacy_config_hash())
    assert not there.hash_matches(here.legacy_config_hash())
    assert not Config(seed=1).hash_matches(here.config_hash())


def test_hash_ignores_key_order_and_sees_every_value():
    data = Config().to_dict()
    reordered = dict(reversed(list(data.items())))
    assert Config.from_dict(reordered).config_hash() == Config().config_hash()
    assert Config(seed=1).config_hash() != Config().config_hash()
    assert Config(inner_lr=0.0010000001).config_hash() != Config().config_hash()
    assert len(Config().config_hash()) == 64


# --- checks against loaded data --------------------------------------------------------


def _splits(
    train_classes: int, test_classes: int, per_class: int, channels: int = 1
) -> ClassSplits:
    storage = torch.zeros(
        (train_classes + test_classes, per_class, channels, 4, 4), dtype=torch.uint8
    )
    train_ids = np.arange(train_classes)
    test_ids = np.arange(train_classes, train_classes + test_classes)
    return ClassSplits(
        train=TensorClassDataset(storage, train_ids, [str(i) for i in train_ids]),
        validation=TensorClassDataset(storage, [], []),
        test=TensorClassDataset(storage, test_ids, [str(i) for i in test_ids]),
    )


def test_validate_against_data_accepts_enough_data():
    validate_against_data(Config(ways=5, shots=1, train_shots=10), _splits(10, 10, 20))


def test_validate_against_data_rejects_too_few_classes():
    with pytest.raises(ConfigError) as info:
        validate_against_data(Config(ways=5), _splits(10, 4, 20))
    assert info.value.field == "ways" and "test" in info.value.message


def test_validate_against_data_rejects_too_small_classes():
    with pytest.raises(ConfigError) as info:
        validate_against_data(Config(train_shots=10), _splits(10, 10, 8))
    assert info.value.field == "train_shots"
    with pytest.raises(ConfigError) as info:
        validate_against_data(Config(train_shots=2, shots=5, queries=1), _splits(10, 10, 5))
    assert info.value.field == "shots"


def test_validate_against_data_rejects_the_wrong_channel_count():
    with pytest.raises(ConfigError) as info:
        validate_against_data(Config(), _splits(10, 10, 20, channels=3))
    assert info.value.field == "dataset"


_PINNED_DEFAULT_HASH = "560b129c6683d180e4a416632e21c632335f253f5f6ee13f243412125e219d0c"
_PINNED_OMNIGLOT_5WAY_1SHOT_HASH = (
    "560b129c6683d180e4a416632e21c632335f253f5f6ee13f243412125e219d0c"
)
_PINNED_SINE_HASH = "ceb28f900f4b885a4c9f7749a155cdd8ead1f398a06f7cdd1ba2ccf8b5500c65"


def test_field_specs_describe_every_field_with_its_kind_choices_and_help():
    from metatrain.config import field_specs

    specs = field_specs()

    assert list(specs) == list(Config().to_dict())
    assert specs["algorithm"] == ("str", ("reptile", "fomaml"), Config.FIELD_HELP["algorithm"])
    assert specs["ways"][:2] == ("int", None)
    assert specs["inner_lr"][0] == "float" and specs["keep_adam_state"][0] == "bool"
    assert specs["data_dir"][0] == "optstr"
    for name, (_kind, choices, help_text) in specs.items():
        value = getattr(Config(), name)
        assert help_text, name
        if choices is not None:
            assert value in choices, name
