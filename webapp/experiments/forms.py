"""The experiment form: every metatrain Config field, a preset to start from, and the seeds.

The form is built from `metatrain.Config` itself (its dataclass fields, types and FIELD_HELP),
so a field added to the library shows up here without touching this module. Validation is the
library's: `clean()` builds the run configs exactly as `services.create_experiment` will and
turns a `ConfigError(field, message)` into an error on that field, so the browser, the API and
the CLI can never disagree about what is valid. Nothing is saved until the whole form is valid.

Presets: a field left empty takes the chosen preset's value (then the library default). A small
script (static/js/experiment_form.js) copies the preset into the fields when the select
changes; without JavaScript the empty-field fallback gives the same result.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from django import forms
from django.conf import settings

from metatrain import PRESETS, Config, ConfigError
from webapp.datasets.access import usable_datasets
from webapp.datasets.models import UserDataset

from .models import Experiment, Queue
from .services import ServiceError, build_run_configs, check_dataset_fits

# Never in the form: seeds have their own field, and `data_dir` is a path on the server that a
# browser user must not choose (the server reads its data from METATRAIN_DATA).
EXCLUDED_FIELDS = frozenset({"seed", "data_dir"})

# Fields shown first, in the order a researcher thinks about a run; the rest follow in the
# dataclass's order, grouped by GROUPS.
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    (
        "Task",
        (
            "dataset",
            "split",
            "algorithm",
            "ways",
            "shots",
            "transductive",
            "train_shots",
            "queries",
            "sine_points",
            "model",
            "image_size",
            "augment_rotations",
            "split_seed",
            "validation_classes",
        ),
    ),
    (
        "Inner loop",
        (
            "inner_optimizer",
            "inner_lr",
            "adam_beta2",
            "keep_adam_state",
            "inner_batch",
            "inner_iters",
            "fomaml_tail_shots",
        ),
    ),
    ("Outer loop", ("meta_batch", "meta_iters", "meta_step", "meta_step_final")),
    (
        "Evaluation and checkpoints",
        (
            "eval_inner_batch",
            "eval_inner_iters",
            "validation_interval",
            "validation_tasks",
            "final_eval_tasks",
            "checkpoint_interval",
        ),
    ),
]
OTHER_GROUP = "Other settings"

# A library error about the config's `seed` is about one of the form's seeds.
FIELD_ALIASES = {"seed": "seeds"}

BOOL_CHOICES = [("", "preset's value"), ("true", "yes"), ("false", "no")]


def config_fields() -> list[str]:
    """The Config fields the form edits, in display order."""
    names = [f.name for f in dataclasses.fields(Config) if f.name not in EXCLUDED_FIELDS]
    ordered = [name for _, group in GROUPS for name in group if name in names]
    return ordered + [name for name in names if name not in ordered]


def group_of(name: str) -> str:
    for title, group in GROUPS:
        if name in group:
            return title
    return OTHER_GROUP


def config_defaults() -> dict[str, Any]:
    """The library's default value of every field (what an empty field means without preset)."""
    try:
        return Config().to_dict()
    except Exception:  # a Config whose bare defaults do not validate: read the dataclass
        defaults = {}
        for f in dataclasses.fields(Config):
            if f.default is not dataclasses.MISSING:
                defaults[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                defaults[f.name] = f.default_factory()
        return defaults


def presets_for_script() -> dict[str, Any]:
    """The JSON blob the preset script reads: library defaults and each preset's values."""
    return {
        "defaults": {k: v for k, v in config_defaults().items() if k not in EXCLUDED_FIELDS},
        "presets": {
            name: {k: v for k, v in values.items() if k not in EXCLUDED_FIELDS}
            for name, values in PRESETS.items()
        },
    }


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """(inner type, whether None is allowed) for `X | None` / Optional[X]."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def field_choices(name: str, annotation: Any) -> tuple[Any, ...] | None:
    """The allowed values of an enum-like field, or None.

    From a `Literal[...]` annotation if the library uses one; else from the config module's
    field table (the library types enums as plain `str` and validates the values itself).
    """
    inner, _ = _unwrap_optional(annotation)
    if typing.get_origin(inner) is typing.Literal:
        return typing.get_args(inner)
    public = getattr(Config, "FIELD_CHOICES", None)
    if isinstance(public, dict):
        return tuple(public[name]) if public.get(name) else None
    try:
        from metatrain.config import _SPEC  # private: ask for a public FIELD_CHOICES
    except ImportError:
        return None
    spec = _SPEC.get(name)
    return tuple(spec[1]) if spec and spec[1] else None


def _form_field(name: str, annotation: Any) -> forms.Field:
    """A form field for one Config field: a select for enums and booleans, a number input for
    numbers. Always optional: empty means "the preset's value"."""
    help_text = getattr(Config, "FIELD_HELP", {}).get(name, "")
    common = {"required": False, "label": name, "help_text": help_text}
    inner, _ = _unwrap_optional(annotation)
    values = field_choices(name, annotation)
    if values:
        return forms.ChoiceField(
            choices=[("", "preset's value")] + [(str(v), str(v)) for v in values], **common
        )
    if inner is bool:
        return forms.TypedChoiceField(
            choices=BOOL_CHOICES, coerce=lambda v: v == "true", empty_value=None, **common
        )
    if inner is int:
        return forms.IntegerField(widget=forms.NumberInput(attrs={"step": "1"}), **common)
    if inner is float:
        return forms.FloatField(widget=forms.NumberInput(attrs={"step": "any"}), **common)
    return forms.CharField(max_length=500, **common)


def _as_initial(value: Any) -> Any:
    """A config value as a form field's initial value (booleans as the select's strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value


def parse_seeds(raw: str) -> list[int]:
    """'0, 1,2' -> [0, 1, 2]; a ValidationError naming the first bad item otherwise."""
    seeds = []
    for item in raw.replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            seeds.append(int(item))
        except ValueError:
            raise forms.ValidationError(
                f"{item!r} is not a whole number; give seeds like 0, 1, 2."
            ) from None
    if not seeds:
        raise forms.ValidationError("Give at least one seed, like 0, 1, 2.")
    return seeds


class UserDatasetChoiceField(forms.ModelChoiceField):
    """A select of uploaded datasets, each labelled with what limits a task on it."""

    def label_from_instance(self, obj: UserDataset) -> str:
        classes = min(obj.train_classes, obj.val_classes, obj.test_classes)
        return (
            f"{obj.name} (#{obj.pk}, {obj.owner.get_username()}: "
            f"{obj.train_classes}/{obj.val_classes}/{obj.test_classes} classes, "
            f"up to {classes}-way, at least {obj.min_class_images} images per class)"
        )


class ExperimentForm(forms.Form):
    """Define an experiment; `clean()` leaves `self.config` (seed-less) and `self.seeds_list`
    ready for `services.create_experiment`, and `cleaned_data["user_dataset"]` (a UserDataset
    or None).

    Pass `user=request.user`: the dataset select lists only the datasets that user may train
    on (webapp.datasets.access.usable_datasets); without a user it lists none."""

    name = forms.CharField(max_length=200)
    description = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}), required=False, max_length=5000
    )
    preset = forms.ChoiceField(
        required=False,
        help_text="Choosing a preset fills the fields below with the paper's values. "
        "Fields left empty take the preset's value.",
    )
    seeds = forms.CharField(
        initial="0",
        help_text="Comma-separated whole numbers; one run per seed.",
        max_length=400,
    )
    queue = forms.ChoiceField(
        choices=Queue.choices,
        initial=Queue.ANY,
        help_text="Which workers may take the runs.",
    )
    user_dataset = UserDatasetChoiceField(
        queryset=UserDataset.objects.none(),
        required=False,
        label="uploaded dataset",
        empty_label="none: the server's Mini-ImageNet",
        help_text="For dataset imagefolder: train on one of your ready uploads, or a public "
        "one. Its classes and images per class bound ways, shots + queries and train_shots.",
    )

    def __init__(self, *args, user=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["preset"].choices = [("", "none: the library's defaults")] + [
            (name, name) for name in PRESETS
        ]
        if user is not None:
            self.fields["user_dataset"].queryset = usable_datasets(user).order_by("name", "id")
        hints = typing.get_type_hints(Config)
        for name in config_fields():
            self.fields[name] = _form_field(name, hints.get(name, str))
        self.config: dict[str, Any] = {}
        self.seeds_list: list[int] = []
        self._set_placeholders()

    @classmethod
    def initial_from_experiment(cls, experiment: Experiment) -> dict[str, Any]:
        """Initial data that reproduces `experiment` (for cloning)."""
        initial = {
            "name": f"{experiment.name} (copy)"[:200],
            "description": experiment.description,
            "preset": experiment.preset if experiment.preset in PRESETS else "",
            "seeds": ", ".join(str(s) for s in experiment.seeds),
            "queue": experiment.queue,
            "user_dataset": experiment.user_dataset_id,
        }
        for key, value in experiment.config.items():
            if key not in EXCLUDED_FIELDS:
                initial[key] = _as_initial(value)
        return initial

    def _set_placeholders(self) -> None:
        """Show the value an empty number field will take (preset, else library default)."""
        preset_name = self.data.get("preset") if self.is_bound else self.initial.get("preset")
        values = {**config_defaults(), **PRESETS.get(preset_name or "", {})}
        for name in config_fields():
            widget = self.fields[name].widget
            if (
                isinstance(widget, forms.NumberInput | forms.TextInput)
                and values.get(name) is not None
            ):
                widget.attrs["placeholder"] = str(values[name])

    def grouped_config_fields(self) -> list[tuple[str, list[forms.BoundField]]]:
        """(section title, bound fields) in display order, for the template."""
        sections: dict[str, list[forms.BoundField]] = {}
        for name in config_fields():
            sections.setdefault(group_of(name), []).append(self[name])
            if name == "dataset":  # the upload to train on, next to the dataset it needs
                sections[group_of(name)].append(self["user_dataset"])
        return list(sections.items())

    def clean_seeds(self) -> list[int]:
        return parse_seeds(self.cleaned_data["seeds"])

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.errors:  # a field already failed on its own (not a number, unknown preset)
            return cleaned
        preset_values = {
            k: v for k, v in PRESETS.get(cleaned.get("preset") or "", {}).items() if k != "seed"
        }
        given = {
            name: cleaned[name]
            for name in config_fields()
            if cleaned.get(name) is not None and cleaned.get(name) != ""
        }
        config = {**preset_values, **given}
        try:
            run_configs = build_run_configs(config, cleaned["seeds"])
        except ConfigError as err:
            self._add_library_error(err)
            return cleaned
        except ServiceError as err:
            self._add_error_to(err.field, str(err))
            return cleaned
        self._check_against_data(run_configs[0], cleaned.get("user_dataset"))
        if not self.errors:
            self.config = {k: v for k, v in run_configs[0].to_dict().items() if k != "seed"}
            self.seeds_list = cleaned["seeds"]
        return cleaned

    def _add_library_error(self, err: ConfigError) -> None:
        field = FIELD_ALIASES.get(getattr(err, "field", None), getattr(err, "field", None))
        message = getattr(err, "message", None) or str(err)
        if field in self.fields:
            self.add_error(field, message)
        else:
            self.add_error(None, str(err))

    def _add_error_to(self, field: str | None, message: str) -> None:
        field = FIELD_ALIASES.get(field, field)
        self.add_error(field if field in self.fields else None, message)

    def _check_against_data(self, config: Config, dataset: UserDataset | None = None) -> None:
        """The checks the Config cannot make alone: is the data on this server, and does the
        chosen upload hold enough classes and images for the tasks?"""
        if dataset is not None:
            try:
                check_dataset_fits(dataset, config)
            except ServiceError as err:
                self._add_error_to(err.field, str(err))
            return
        if config.dataset != "omniglot":
            return
        from metatrain.data import omniglot_available

        if not omniglot_available(config.data_dir):
            self._add_error_to("dataset", _omniglot_missing_message(config.data_dir))


def _omniglot_missing_message(data_dir: str | None) -> str:
    """Where to put the Omniglot data, in the data loader's own words when it can say."""
    from metatrain.data import DataError

    try:
        from metatrain.data.omniglot import find_sources

        find_sources(data_dir)
    except DataError as err:
        return f"The Omniglot data is not on this server: {err}"
    except ImportError:
        pass
    where = data_dir or f"{settings.METATRAIN_DATA}/omniglot"
    return (
        f"The Omniglot data is not on this server. Put images_background and "
        f"images_evaluation (.npz with alphabets.json, .zip, or folders) in {where}."
    )
