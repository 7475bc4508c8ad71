"""The experiment configuration: typed, validated, hashable, with the paper's presets.

One frozen dataclass holds every knob of a run. It is validated when it is built (directly,
through ``from_dict`` or ``replace``) so that a bad value fails at the form or the command
line, naming its field, instead of an hour into training. Checks that need the data (how many
classes a split really has, how many images a class holds) live in ``validate_against_data``,
which ``train`` and ``evaluate`` call once the data is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .algorithms import ALGORITHMS, algorithm_of

__all__ = [
    "Config",
    "ConfigError",
    "PRESETS",
    "preset",
    "validate_against_data",
    "field_specs",
    "OMNIGLOT_CLASS_COUNTS",
    "OMNIGLOT_IMAGES_PER_CLASS",
    "VERSIONED_FIELDS",
]

# Omniglot facts used by the static checks (the data loader checks them again for real).
OMNIGLOT_IMAGES_PER_CLASS = 20
# split -> (training characters before rotation and validation carve-out, test characters)
OMNIGLOT_CLASS_COUNTS = {"paper": (1200, 423), "lake": (964, 659)}

DATASETS = ("omniglot", "imagefolder", "sine")
MODELS = ("omniglot_conv", "miniimagenet_conv", "sine_mlp")
_MODEL_FOR_DATASET = {
    "omniglot": ("omniglot_conv", "miniimagenet_conv"),
    "imagefolder": ("omniglot_conv", "miniimagenet_conv"),
    "sine": ("sine_mlp",),
}
_MAX_SEED = 2**63 - 1


class ConfigError(ValueError):
    """A configuration value is invalid. ``str(err)`` is ``"<field>: <message>"``."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")

    def __reduce__(  # keep (field, message) when pickled across processes (Celery)
        self,
    ) -> tuple[type[ConfigError], tuple[str, str]]:
        return (type(self), (self.field, self.message))


# name -> (kind, choices or None). kind: "int", "float", "bool", "str", "optstr".
_SPEC: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "dataset": ("str", DATASETS),
    "data_dir": ("optstr", None),
    "split": ("str", ("paper", "lake")),
    "split_seed": ("int", None),
    "split_version": ("int", None),
    "validation_classes": ("int", None),
    "augment_rotations": ("bool", None),
    "image_size": ("int", None),
    "model": ("str", MODELS),
    "ways": ("int", None),
    "shots": ("int", None),
    "train_shots": ("int", None),
    "queries": ("int", None),
    "algorithm": ("str", tuple(ALGORITHMS)),
    "fomaml_tail_shots": ("int", None),
    "inner_optimizer": ("str", ("adam", "sgd")),
    "inner_lr": ("float", None),
    "adam_beta2": ("float", None),
    "keep_adam_state": ("bool", None),
    "inner_batch": ("int", None),
    "inner_iters": ("int", None),
    "meta_batch": ("int", None),
    "meta_iters": ("int", None),
    "meta_step": ("float", None),
    "meta_step_final": ("float", None),
    "eval_inner_batch": ("int", None),
    "eval_inner_iters": ("int", None),
    "transductive": ("bool", None),
    "validation_interval": ("int", None),
    "validation_tasks": ("int", None),
    "checkpoint_interval": ("int", None),
    "final_eval_tasks": ("int", None),
    "seed": ("int", None),
    "sine_points": ("int", None),
    "sine_version": ("int", None),
}

#: Fields that name the version of a procedure (how the paper split is drawn, where sine
#: training tasks put their x): field -> (legacy, current). A config recorded before the field
#: existed lacks it and was trained with the legacy version, so ``from_dict`` reads it so;
#: a field at its legacy version is left out of the hash, so those configs keep their hash
#: (and their checkpoints and recorded runs keep matching). New configs get the current one.
VERSIONED_FIELDS: dict[str, tuple[int, int]] = {"split_version": (1, 2), "sine_version": (1, 2)}

_FIELD_HELP: dict[str, str] = {
    "dataset": "Which data: Omniglot, a Mini-ImageNet-style image folder, or sine regression.",
    "data_dir": "The dataset's own folder; empty: $METATRAIN_DATA/omniglot (or /miniimagenet).",
    "split": "Omniglot classes: 'paper' (1,623 characters shuffled, 1,200 train / 423 test) "
    "or 'lake' (30 background / 20 evaluation alphabets).",
    "split_seed": "Seed of the split's shuffle: Python's random.Random(split_seed).shuffle, "
    "as the paper's code (whose seed is 0); recorded so the split can be rebuilt.",
    "split_version": "How the split is drawn: 2 (current) the paper code's own procedure "
    "(all 50 alphabets merged, sorted, shuffled by Python's random); 1 the order used before "
    "(background first, numpy's generator), kept so older runs stay what they were.",
    "validation_classes": "Training characters (before rotation) held out for periodic "
    "validation; 0 keeps all of them for training (the paper) and validates on test classes.",
    "augment_rotations": "Add each training class rotated by 90, 180 and 270 degrees as new "
    "classes (Omniglot, as in the paper).",
    "image_size": "Side of the square input images in pixels (28 Omniglot, 84 Mini-ImageNet).",
    "model": "Network: the paper's Omniglot or Mini-ImageNet conv net, or the sine MLP.",
    "ways": "N: classes per task (evaluation and training).",
    "shots": "K: labelled examples per class in an evaluation task.",
    "train_shots": "Examples per class in a training task (paper: 10 Omniglot, 15 "
    "Mini-ImageNet); sine: points per training task.",
    "queries": "Held-out examples per class to classify in an evaluation task (paper: 1).",
    "algorithm": "Meta-learning algorithm: Reptile or first-order MAML.",
    "fomaml_tail_shots": "FOMAML only: extra examples per class, disjoint from the inner-loop "
    "ones, forming the final mini-batch whose update is the meta-gradient (the paper code's "
    "--foml-tail); 0: the last of the inner_iters mini-batches is that batch (its --foml alone, "
    "the paper's section 6).",
    "inner_optimizer": "Inner-loop optimizer: Adam with beta1 = 0 (the paper) or plain SGD.",
    "inner_lr": "Inner-loop learning rate. Classification uses the summed (not averaged) "
    "cross-entropy of a mini-batch, as the paper's code; sine uses the mean squared error.",
    "adam_beta2": "Adam's beta2 (second-moment decay); the paper uses TF's default 0.999.",
    "keep_adam_state": "Keep Adam's moments across training tasks and restore them after "
    "each evaluation task (the paper's code); off: a fresh optimizer for every task.",
    "inner_batch": "Mini-batch size of the training inner loop.",
    "inner_iters": "Mini-batches (gradient steps) per training task.",
    "meta_batch": "Tasks averaged per outer (meta) step.",
    "meta_iters": "Outer (meta) steps in total.",
    "meta_step": "Outer step size at the start (annealed linearly to meta_step_final).",
    "meta_step_final": "Outer step size at the end of training.",
    "eval_inner_batch": "Mini-batch size when adapting to an evaluation task.",
    "eval_inner_iters": "Gradient steps when adapting to an evaluation task.",
    "transductive": "Classify all queries in one batch (batch norm sees them together) "
    "instead of each query alone with the support set.",
    "validation_interval": "Evaluate on validation tasks every N meta-iterations (0: never).",
    "validation_tasks": "Tasks per periodic validation.",
    "checkpoint_interval": "Meta-iterations between checkpoints (training resumes from them).",
    "final_eval_tasks": "Tasks for the final test evaluation (paper: 10,000).",
    "seed": "Seeds everything: initialization, task sampling, mini-batches, evaluation tasks.",
    "sine_points": "Sine only: K, the points given to adapt in an evaluation task.",
    "sine_version": "Sine only: where a training task's x lie. 2 (current): train_shots evenly "
    "spaced points over [-5, 5], shuffled into mini-batches, as the Reptile sine demo; 1: "
    "drawn uniformly at random (older runs).",
}


@dataclass(frozen=True)
class Config:
    """Every setting of a meta-learning experiment; defaults are Omniglot 5-way 1-shot."""

    dataset: str = "omniglot"
    data_dir: str | None = None
    split: str = "paper"
    split_seed: int = 0
    split_version: int = 2
    validation_classes: int = 0
    augment_rotations: bool = True
    image_size: int = 28
    model: str = "omniglot_conv"
    ways: int = 5
    shots: int = 1
    train_shots: int = 10
    queries: int = 1
    algorithm: str = "reptile"
    fomaml_tail_shots: int = 5
    inner_optimizer: str = "adam"
    inner_lr: float = 0.001
    adam_beta2: float = 0.999
    keep_adam_state: bool = True
    inner_batch: int = 10
    inner_iters: int = 5
    meta_batch: int = 5
    meta_iters: int = 100_000
    meta_step: float = 1.0
    meta_step_final: float = 0.0
    eval_inner_batch: int = 5
    eval_inner_iters: int = 50
    transductive: bool = True
    validation_interval: int = 1000
    validation_tasks: int = 200
    checkpoint_interval: int = 500
    final_eval_tasks: int = 10_000
    seed: int = 0
    sine_points: int = 10
    sine_version: int = 2

    FIELD_HELP: ClassVar[dict[str, str]] = _FIELD_HELP
    #: field -> its allowed values, for the fields that take one of a few.
    FIELD_CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        name: choices for name, (_, choices) in _SPEC.items() if choices is not None
    }

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = _check_type(f.name, getattr(self, f.name))
            object.__setattr__(self, f.name, value)
        _check_values(self)

    # --- construction ------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """A validated Config from plain JSON-like data; missing keys take their defaults,
        except a missing version field (``VERSIONED_FIELDS``), which takes its legacy
        version: data without it was recorded before it existed."""
        if not isinstance(data, Mapping):
            raise ConfigError(
                "config", f"expected a mapping of field names, got {type(data).__name__}"
            )
        for key in data:
            if key not in _SPEC:
                raise ConfigError(str(key), "unknown field")
        legacy = {name: old for name, (old, _) in VERSIONED_FIELDS.items()}
        return cls(**{**legacy, **dict(data)})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict, fields in declaration order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def config_hash(self) -> str:
        """sha256 hex of the canonical JSON (sorted keys, no spaces) of what is trained.

        ``data_dir`` says where the files are on this host, not what was trained: it is hashed
        as None, so a run resumes on another host whose data lives elsewhere (and the hash of
        a config without ``data_dir`` is what it always was). Version fields at their legacy
        version are left out, so configs recorded before they existed keep their hash."""
        return _sha256_json({**self._hashed(), "data_dir": None})

    def legacy_config_hash(self) -> str:
        """The hash of every field, ``data_dir`` included, as checkpoints written before
        ``config_hash`` left it out recorded it."""
        return _sha256_json(self._hashed())

    def _hashed(self) -> dict[str, Any]:
        return {
            name: value
            for name, value in self.to_dict().items()
            if name not in VERSIONED_FIELDS or value != VERSIONED_FIELDS[name][0]
        }

    def hash_matches(self, stored: str) -> bool:
        """Whether ``stored`` (a checkpoint's or a run's recorded hash) is this config's, by
        either rule (``config_hash`` or ``legacy_config_hash``)."""
        return stored in (self.config_hash(), self.legacy_config_hash())

    def replace(self, **changes: Any) -> Config:
        """A validated copy with ``changes`` applied."""
        for key in changes:
            if key not in _SPEC:
                raise ConfigError(key, "unknown field")
        return dataclasses.replace(self, **changes)

    # --- derived -----------------------------------------------------------------------

    @property
    def is_classification(self) -> bool:
        return self.dataset != "sine"

    @property
    def in_channels(self) -> int:
        """Channels of the input images the data loaders produce (1 Omniglot, 3 RGB)."""
        return {"omniglot": 1, "imagefolder": 3, "sine": 1}[self.dataset]

    @property
    def training_shots(self) -> int:
        """Examples per class a training task draws (FOMAML adds its disjoint tail)."""
        return algorithm_of(self).training_shots(self)


def _sha256_json(data: dict[str, Any]) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def field_specs() -> dict[str, tuple[str, tuple[str, ...] | None, str]]:
    """Every Config field, in declaration order: ``name -> (kind, choices, help)``.

    ``kind`` is ``"int"``, ``"float"``, ``"bool"``, ``"str"`` or ``"optstr"`` (a string or
    None); ``choices`` the allowed values of an enum-like field, else None; ``help`` the line of
    ``Config.FIELD_HELP``. For front ends that build their inputs from the library (the
    dashboard's form) without reading its private tables.
    """
    return {
        f.name: (_SPEC[f.name][0], _SPEC[f.name][1], _FIELD_HELP.get(f.name, ""))
        for f in dataclasses.fields(Config)
    }


def _check_type(name: str, value: Any) -> Any:
    kind, choices = _SPEC[name]
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(name, f"must be true or false, got {value!r}")
    elif kind == "int":
        # bool is a subclass of int: reject it explicitly (True is not 1 here).
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f"must be an integer, got {value!r}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(name, f"must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(name, f"must be a finite number, got {value!r}")
    elif kind == "optstr":
        if value is not None and not isinstance(value, str):
            raise ConfigError(name, f"must be a string or null, got {value!r}")
        if value == "":
            value = None
    else:
        if not isinstance(value, str):
            raise ConfigError(name, f"must be a string, got {value!r}")
    if choices is not None and value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}; got {value!r}")
    return value


def _at_least(cfg: Config, name: str, low: int) -> None:
    value = getattr(cfg, name)
    if value < low:
        raise ConfigError(name, f"must be at least {low}, got {value}")


def _check_values(cfg: Config) -> None:
    """Ranges and cross-field rules that need no data."""
    for name in (
        "inner_batch",
        "inner_iters",
        "meta_batch",
        "meta_iters",
        "eval_inner_batch",
        "eval_inner_iters",
        "validation_tasks",
        "checkpoint_interval",
        "final_eval_tasks",
        "shots",
        "train_shots",
        "queries",
        "sine_points",
    ):
        _at_least(cfg, name, 1)
    for algorithm in ALGORITHMS.values():  # whichever is chosen, as every field is checked
        for name, low in algorithm.fields.items():
            _at_least(cfg, name, low)
    for name in ("validation_interval", "validation_classes", "seed", "split_seed"):
        _at_least(cfg, name, 0)
    for name in ("seed", "split_seed"):
        if getattr(cfg, name) > _MAX_SEED:
            raise ConfigError(name, f"must be at most 2**63 - 1, got {getattr(cfg, name)}")
    _at_least(cfg, "ways", 2)
    for name, (old, current) in VERSIONED_FIELDS.items():
        if not old <= getattr(cfg, name) <= current:
            raise ConfigError(name, f"must be {old} to {current}, got {getattr(cfg, name)}")
    if cfg.inner_lr <= 0:
        raise ConfigError("inner_lr", f"must be positive, got {cfg.inner_lr}")
    if not 0.0 <= cfg.adam_beta2 < 1.0:
        raise ConfigError("adam_beta2", f"must be in [0, 1), got {cfg.adam_beta2}")
    if cfg.meta_step <= 0:
        raise ConfigError("meta_step", f"must be positive, got {cfg.meta_step}")
    if cfg.meta_step_final < 0:
        raise ConfigError("meta_step_final", f"must be at least 0, got {cfg.meta_step_final}")
    if not 4 <= cfg.image_size <= 1024:
        raise ConfigError("image_size", f"must be between 4 and 1024 pixels, got {cfg.image_size}")

    if cfg.model not in _MODEL_FOR_DATASET[cfg.dataset]:
        allowed = " or ".join(_MODEL_FOR_DATASET[cfg.dataset])
        raise ConfigError("model", f"{cfg.model} does not fit dataset {cfg.dataset}; use {allowed}")
    if cfg.model == "miniimagenet_conv" and cfg.image_size < 16:
        raise ConfigError("image_size", "miniimagenet_conv halves the image 4 times: use >= 16")

    if cfg.dataset == "omniglot":
        if cfg.image_size > 105:
            raise ConfigError("image_size", f"Omniglot images are 105 pixels; got {cfg.image_size}")
        _check_omniglot_counts(cfg)


def _check_omniglot_counts(cfg: Config) -> None:
    train_chars, test_chars = OMNIGLOT_CLASS_COUNTS[cfg.split]
    if cfg.validation_classes >= train_chars:
        raise ConfigError(
            "validation_classes",
            f"the {cfg.split} split has {train_chars} training characters; "
            f"got {cfg.validation_classes}",
        )
    if 0 < cfg.validation_classes < cfg.ways:
        raise ConfigError(
            "validation_classes",
            f"must be 0 or at least ways ({cfg.ways}) to sample {cfg.ways}-way validation tasks",
        )
    train_classes = (train_chars - cfg.validation_classes) * (4 if cfg.augment_rotations else 1)
    if cfg.ways > test_chars:
        raise ConfigError(
            "ways", f"the {cfg.split} split has {test_chars} test classes; got ways={cfg.ways}"
        )
    if cfg.ways > train_classes:
        raise ConfigError(
            "ways", f"only {train_classes} training classes remain; got ways={cfg.ways}"
        )
    per_class = OMNIGLOT_IMAGES_PER_CLASS
    if cfg.shots + cfg.queries > per_class:
        raise ConfigError(
            "shots",
            f"shots + queries = {cfg.shots + cfg.queries} but an Omniglot class has "
            f"{per_class} images",
        )
    if cfg.training_shots > per_class:
        raise ConfigError(
            "train_shots",
            f"{algorithm_of(cfg).explain_training_shots(cfg)} but an Omniglot class has "
            f"{per_class} images",
        )


def validate_against_data(config: Config, splits: Any) -> None:
    """Check ``config`` against loaded ``ClassSplits`` (train, validation, test).

    Static checks cannot know a custom image folder's class counts, so this runs once the data
    is loaded and raises ConfigError naming the field to change.
    """
    if not config.is_classification:
        return
    checks = [("train", splits.train, config.training_shots, "train_shots")]
    checks.append(("test", splits.test, config.shots + config.queries, "shots"))
    validation = splits.validation
    if config.validation_interval > 0 and validation is not None and validation.num_classes > 0:
        checks.append(("validation", validation, config.shots + config.queries, "shots"))
    for name, dataset, needed, shots_field in checks:
        if dataset.num_classes < config.ways:
            raise ConfigError(
                "ways",
                f"the {name} split has {dataset.num_classes} classes; got ways={config.ways}",
            )
        sizes = dataset.class_sizes()
        smallest = int(min(sizes)) if len(sizes) else 0
        if smallest < needed:
            raise ConfigError(
                shots_field,
                f"a task needs {needed} images per class but the smallest class of the "
                f"{name} split has {smallest}",
            )
    channels = splits.train.image_shape[0]
    if channels != config.in_channels:
        raise ConfigError(
            "dataset", f"expected {config.in_channels}-channel images, got {channels}"
        )


# --- presets -------------------------------------------------------------------------------

# The paper's Appendix A hyper-parameters (the same as the supervised-reptile README commands
# used for the algorithm comparison). Shared by every preset unless overridden below.
_COMMON: dict[str, Any] = {
    "meta_step": 1.0,
    "meta_step_final": 0.0,
    "inner_optimizer": "adam",
    "keep_adam_state": True,
    "transductive": True,
    "queries": 1,
    "final_eval_tasks": 10_000,
    # Not in the paper (its code logs accuracy on one train and one test task every 10
    # iterations): 200 tasks every 1,000 iterations gives a +-~3 % (95 %) estimate at ~0.2 %
    # of the training time.
    "validation_interval": 1000,
    "validation_tasks": 200,
    "checkpoint_interval": 500,
}
_OMNIGLOT_5WAY: dict[str, Any] = {
    **_COMMON,
    "dataset": "omniglot",
    "split": "paper",
    "model": "omniglot_conv",
    "image_size": 28,
    "augment_rotations": True,
    "ways": 5,
    "inner_batch": 10,
    "inner_iters": 5,
    "meta_batch": 5,
    "meta_iters": 100_000,
    "eval_inner_batch": 5,
    "eval_inner_iters": 50,
    "inner_lr": 0.001,
    "train_shots": 10,
}
_OMNIGLOT_20WAY: dict[str, Any] = {
    **_OMNIGLOT_5WAY,
    "ways": 20,
    "inner_batch": 20,
    "inner_iters": 10,
    "meta_iters": 200_000,
    "eval_inner_batch": 10,
    "inner_lr": 0.0005,
}
_MINIIMAGENET: dict[str, Any] = {
    **_COMMON,
    "dataset": "imagefolder",
    "model": "miniimagenet_conv",
    "image_size": 84,
    "augment_rotations": False,
    "ways": 5,
    "inner_batch": 10,
    "inner_iters": 8,
    "meta_batch": 5,
    "meta_iters": 100_000,
    "eval_inner_iters": 50,
    "inner_lr": 0.001,
    "train_shots": 15,
}
# Sine regression, after the Reptile sine demo (openai.com/blog/reptile): plain SGD with
# step 0.02 on the mean squared error; each training task is one epoch over the demo's 50
# evenly spaced points of [-5, 5] (sine_version 2), shuffled, in mini-batches of 10 (5 steps); one task per outer step with step size 0.1 annealed to 0
# over 30,000 steps; evaluation adapts 32 full-batch steps on K = 10 points and measures the
# error on a dense grid of [-5, 5].
_SINE: dict[str, Any] = {
    "dataset": "sine",
    "model": "sine_mlp",
    "algorithm": "reptile",
    "inner_optimizer": "sgd",
    "inner_lr": 0.02,
    "keep_adam_state": False,
    "train_shots": 50,
    "inner_batch": 10,
    "inner_iters": 5,
    "meta_batch": 1,
    "meta_iters": 30_000,
    "meta_step": 0.1,
    "meta_step_final": 0.0,
    "sine_points": 10,
    "eval_inner_batch": 10,
    "eval_inner_iters": 32,
    "validation_interval": 1000,
    "validation_tasks": 100,
    "checkpoint_interval": 1000,
    "final_eval_tasks": 1000,
    "augment_rotations": False,
}

_PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    "omniglot-5way-1shot": {**_OMNIGLOT_5WAY, "shots": 1},
    "omniglot-5way-5shot": {**_OMNIGLOT_5WAY, "shots": 5},
    "omniglot-20way-1shot": {**_OMNIGLOT_20WAY, "shots": 1},
    "omniglot-20way-5shot": {**_OMNIGLOT_20WAY, "shots": 5},
    "miniimagenet-5way-1shot": {**_MINIIMAGENET, "shots": 1, "eval_inner_batch": 5},
    "miniimagenet-5way-5shot": {**_MINIIMAGENET, "shots": 5, "eval_inner_batch": 15},
    "sine": _SINE,
}

_CURRENT_VERSIONS = {name: current for name, (_, current) in VERSIONED_FIELDS.items()}

#: name -> complete config dict (every field), validated at import.
PRESETS: dict[str, dict[str, Any]] = {
    name: Config.from_dict({**_CURRENT_VERSIONS, **values}).to_dict()
    for name, values in _PRESET_OVERRIDES.items()
}


def preset(name: str, **overrides: Any) -> Config:
    """The named preset with ``overrides`` applied (validated)."""
    if name not in PRESETS:
        raise ConfigError("preset", f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return Config.from_dict({**PRESETS[name], **overrides})
