"""One validation path for a new experiment, whichever door it comes through (the form, the
JSON API, a management command), reporting every field error at once.

The rules are the training library's: a config is valid when `metatrain.Config` accepts it.
The library stops at the first bad field, so `config_errors` asks it again after setting each
field it refused back to the preset's value, until it accepts the rest or complains about a
field the user did not set (a cross-field rule: reported, then it stops, rather than guess).
Around it: what the database and this server need (32-bit integers, no NUL, no server paths,
the per-run meta-iteration cap), whether the data is on this server, and whether an uploaded
dataset can serve the tasks.

Nothing here writes; `services.create_experiment` calls `validate_experiment` inside its
transaction, and the form calls the same function from `clean()`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from metatrain import PRESETS, Config, ConfigError
from metatrain.config import field_specs
from webapp.datasets.models import UserDataset

from .dataset_checks import dataset_fit_errors, get_user_dataset
from .errors import ErrorList, FieldError, ServiceError
from .models import Queue

MAX_SEEDS = 20
# Run.seed, ways, shots and the counters a worker derives from the config (iterations, tasks)
# are 32-bit integer columns: PostgreSQL refuses a larger value with an error, SQLite above
# 64 bits. Every integer of a config is held to this range before anything is written.
DB_INT_MAX = 2**31 - 1
MAX_NAME = 200
MAX_DESCRIPTION = 5000
MAX_PRESET = 64
# A config string is a choice (a few characters) or data_dir (refused): anything longer is
# junk, and would be echoed back in the library's "got '...'" message.
MAX_CONFIG_STRING = 1000


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------------
# Presets: the one place a preset and a user's values are merged
# ------------------------------------------------------------------------------------------
def config_defaults() -> dict[str, Any]:
    """The library's default of every Config field, seed included."""
    return Config().to_dict()


def base_config(preset: str = "") -> dict[str, Any]:
    """What a field the user leaves out takes: the preset's value, else the library's
    default. Complete (every field) and seed-less. An unknown preset gives the defaults."""
    values = {**config_defaults(), **PRESETS.get(preset or "", {})}
    values.pop("seed", None)
    return values


def merge_preset(preset: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The config a user asked for: `preset`'s values (or the defaults) with `overrides` on
    top. Not validated: `config_errors` says what is wrong with it."""
    return {**base_config(preset), **overrides}


# ------------------------------------------------------------------------------------------
# Single values
# ------------------------------------------------------------------------------------------
def text_problem(value: object, max_length: int, *, required: bool = False) -> str | None:
    """Text the database would refuse (PostgreSQL: NUL, or over a column's length)."""
    if not isinstance(value, str):
        return "Must be text."
    if required and not value.strip():
        return "This field is required."
    if len(value) > max_length:
        return f"At most {max_length} characters."
    if "\x00" in value:
        return "NUL characters are not allowed."
    return None


def seeds_problem(seeds: object) -> str | None:
    """What is wrong with a list of seeds, or None."""
    if not isinstance(seeds, list | tuple):
        return "Give the seeds as a list of whole numbers, like 0, 1, 2."
    if not seeds:
        return "Give at least one seed."
    if len(seeds) > MAX_SEEDS:
        return f"At most {MAX_SEEDS} seeds per experiment."
    if any(not _is_int(seed) or not 0 <= seed <= DB_INT_MAX for seed in seeds):
        return f"Seeds must be whole numbers from 0 to {DB_INT_MAX:,}."
    if len(set(seeds)) != len(seeds):
        return "Seeds must be distinct."
    return None


def override_problem(key: object, value: object) -> str | None:
    """What this server refuses in one config value before the library sees it: unknown
    fields, the seed (it has its own list), a server path, values the database cannot hold."""
    if not isinstance(key, str) or key not in field_specs():
        return "Unknown field: not a setting of metatrain's Config."
    if key == "seed":
        return "Give seeds in the seeds list, not in the config."
    if key == "data_dir" and value not in (None, ""):
        # A path typed by a user would let them read any folder on the workers' machines;
        # data comes from METATRAIN_DATA or from an uploaded dataset instead.
        return (
            "data_dir cannot be set from the dashboard; use the installed data or upload a dataset."
        )
    if value is not None and not isinstance(value, bool | int | float | str):
        return "Must be a number, a string, true/false or null."
    if _is_int(value) and abs(value) > DB_INT_MAX:
        return f"Too large: {key} must lie within ±{DB_INT_MAX:,}."
    if isinstance(value, str):
        if len(value) > MAX_CONFIG_STRING:
            return f"At most {MAX_CONFIG_STRING} characters."
        if "\x00" in value:
            return "NUL characters are not allowed."
    return None


def meta_iters_cap_problem(meta_iters: object) -> str | None:
    """The per-run cap (QUOTA_MAX_META_ITERS_PER_RUN, 0: none). It applies to everyone, staff
    included: it is a bound on one run, against a typo that would hold a worker for days."""
    cap = settings.QUOTA_MAX_META_ITERS_PER_RUN
    if not cap or not _is_int(meta_iters) or meta_iters <= cap:
        return None
    return (
        f"{meta_iters:,} meta-iterations is more than this server allows for one run "
        f"(QUOTA_MAX_META_ITERS_PER_RUN = {cap:,}). Use at most {cap:,}, or ask an "
        "administrator to raise the limit."
    )


# ------------------------------------------------------------------------------------------
# The config
# ------------------------------------------------------------------------------------------
def config_errors(
    base: Mapping[str, Any], overrides: Mapping[str, Any], seed: int = 0
) -> tuple[Config | None, list[FieldError]]:
    """The Config that `overrides` on `base` (complete, seed-less) make, or every error.

    Returns (config, []) or (None, errors); errors name Config fields. `metatrain.Config`
    is asked again after each field it refuses is set back to its `base` value, so a negative
    learning rate and 5,000 ways are both reported. When it refuses a field the user did not
    set, that is a rule between fields (the dataset's model, say): it is reported on the field
    the library names, and checking stops there.
    """
    errors = ErrorList()
    candidate = dict(base)
    for key, value in overrides.items():
        problem = override_problem(key, value)
        if problem:
            errors.add(str(key), problem)
        else:
            candidate[key] = value
    cap_problem = meta_iters_cap_problem(candidate.get("meta_iters"))
    if cap_problem:
        errors.add("meta_iters", cap_problem)
        if "meta_iters" in overrides:
            candidate["meta_iters"] = base["meta_iters"]
    candidate["seed"] = seed
    # Each pass either succeeds or sets one more field back: at most one pass per field.
    for _ in range(len(candidate) + 1):
        try:
            config = Config.from_dict(candidate)
        except ConfigError as err:
            field = str(err.field)
            first_time = not errors.has(field)
            errors.add(field, err.message)
            if first_time and field in overrides and field in base:
                candidate[field] = base[field]
                continue
            return None, errors.errors
        return (None, errors.errors) if errors else (config, [])
    return None, errors.errors


def data_problem(config: Config) -> FieldError | None:
    """Is the data the config trains on installed on this server? Omniglot is (the web
    process sees the same METATRAIN_DATA as the workers); a run queued without it could only
    fail. Sine needs no data; Mini-ImageNet without an upload is not checked here."""
    if config.dataset != "omniglot":
        return None
    from metatrain.data import omniglot_available

    if omniglot_available(config.data_dir):
        return None
    # metatrain's documented default: data_dir None is $METATRAIN_DATA/omniglot.
    root = os.environ.get("METATRAIN_DATA") or settings.METATRAIN_DATA
    where = config.data_dir or os.path.join(root, "omniglot")
    return (
        "dataset",
        f"The Omniglot data is not on this server. Put images_background and "
        f"images_evaluation (.npz with alphabets.json, .zip, or folders) in {where}, or "
        "choose another dataset.",
    )


# ------------------------------------------------------------------------------------------
# A whole experiment
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ValidExperiment:
    """A request that passed every check: what `create_experiment` writes."""

    name: str
    description: str
    preset: str
    queue: str
    seeds: list[int]
    config: dict[str, Any]  # complete, seed-less: the experiment's own config
    run_configs: list[Config]  # one per seed, in the order of `seeds`
    dataset: UserDataset | None


def validate_experiment(
    owner,
    *,
    name: object,
    config: object,
    seeds: object,
    preset: object = "",
    queue: object = Queue.ANY,
    description: object = "",
    user_dataset: object = None,
    lock_dataset: bool = False,
) -> ValidExperiment:
    """Check everything about a new experiment; raise ValidationFailed with every error.

    `config` holds the user's values (overrides of `preset`, whose values fill the rest);
    `user_dataset` an id or a UserDataset. Field names in errors: name, description, preset,
    queue, seeds, user_dataset, or a Config field (each front door maps them to its own).
    Any input type is refused with a message, never an exception.
    """
    errors = ErrorList()
    for field, value, limit, required in (
        ("name", name, MAX_NAME, True),
        ("description", description, MAX_DESCRIPTION, False),
        ("preset", preset, MAX_PRESET, False),
    ):
        problem = text_problem(value, limit, required=required)
        if problem:
            errors.add(field, problem)
    if not errors.has("preset") and preset and preset not in PRESETS:
        errors.add("preset", f"Unknown preset {preset!r}; known: {', '.join(PRESETS)}.")
    # With the preset unknown, the fields it would fill are unknown too: the values given are
    # checked against the defaults, and nothing is checked against the data.
    preset_known = not errors.has("preset")
    if queue not in Queue.values:
        errors.add("queue", f"Unknown queue {queue!r}; choose one of {', '.join(Queue.values)}.")
    seed_problem = seeds_problem(seeds)
    if seed_problem:
        errors.add("seeds", seed_problem)
    if not isinstance(config, Mapping):
        errors.add(None, "The config must be a mapping of field names to values.")
        config = {}

    base = base_config(str(preset) if preset_known else "")
    run_seed = seeds[0] if not seed_problem else 0  # type: ignore[index]
    run_config, problems = config_errors(base, config, run_seed)
    errors.extend(problems)

    dataset = None
    if user_dataset is not None:
        try:
            dataset = get_user_dataset(owner, user_dataset, lock=lock_dataset)
        except ServiceError as err:
            errors.add(err.field, str(err))
    if run_config is not None and preset_known:
        if dataset is not None:
            errors.extend(dataset_fit_errors(dataset, run_config))
        elif user_dataset is None:
            problem = data_problem(run_config)
            if problem:
                errors.add(*problem)

    errors.raise_if_any()
    assert run_config is not None  # no errors: config_errors returned a Config
    seed_list = list(seeds)  # type: ignore[call-overload]
    return ValidExperiment(
        name=str(name),
        description=str(description),
        preset=str(preset),
        queue=str(queue),
        seeds=seed_list,
        config={k: v for k, v in run_config.to_dict().items() if k != "seed"},
        run_configs=[run_config.replace(seed=seed) for seed in seed_list],
        dataset=dataset,
    )
