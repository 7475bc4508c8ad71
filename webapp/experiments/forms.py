"""The experiment form: every metatrain Config field, a preset to start from, and the seeds.

The form is built from the library itself (`metatrain.config.field_specs()`: each field's kind,
allowed values and help), so a field added to the library shows up here without touching this
module. Validation is the service layer's (`validation.validate_experiment`), the very function
the JSON API and `services.create_experiment` call: the browser and the API cannot disagree
about what is valid, and every field error is reported at once. Nothing is saved until the whole
form is valid.

Presets: a field left empty takes the chosen preset's value (then the library default). A small
script (static/js/experiment_form.js) copies the preset into the fields when the select
changes; without JavaScript the empty-field fallback gives the same result.
"""

from __future__ import annotations

from typing import Any

from django import forms

from metatrain import PRESETS
from metatrain.config import field_specs
from webapp.datasets.access import usable_datasets
from webapp.datasets.models import UserDataset

from .errors import FieldError, ValidationFailed
from .models import Experiment, Queue
from .validation import ValidExperiment, base_config, config_defaults, validate_experiment

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
    names = [name for name in field_specs() if name not in EXCLUDED_FIELDS]
    ordered = [name for _, group in GROUPS for name in group if name in names]
    return ordered + [name for name in names if name not in ordered]


def group_of(name: str) -> str:
    for title, group in GROUPS:
        if name in group:
            return title
    return OTHER_GROUP


def presets_for_script() -> dict[str, Any]:
    """The JSON blob the preset script reads: library defaults and each preset's values."""
    return {
        "defaults": {k: v for k, v in config_defaults().items() if k not in EXCLUDED_FIELDS},
        "presets": {
            name: {k: v for k, v in values.items() if k not in EXCLUDED_FIELDS}
            for name, values in PRESETS.items()
        },
    }


def _form_field(name: str, kind: str, choices: tuple[str, ...] | None, help_text: str):
    """A form field for one Config field: a select for enums and booleans, a number input for
    numbers. Always optional: empty means "the preset's value"."""
    common = {"required": False, "label": name, "help_text": help_text}
    if choices:
        return forms.ChoiceField(
            choices=[("", "preset's value")] + [(str(v), str(v)) for v in choices], **common
        )
    if kind == "bool":
        return forms.TypedChoiceField(
            choices=BOOL_CHOICES, coerce=lambda v: v == "true", empty_value=None, **common
        )
    if kind == "int":
        return forms.IntegerField(widget=forms.NumberInput(attrs={"step": "1"}), **common)
    if kind == "float":
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
    """Define an experiment; once valid, `self.valid` is the service layer's checked
    request (`validation.ValidExperiment`), and `self.config` (the user's values: overrides
    of the preset) and `self.seeds_list` are what `services.create_experiment` takes.

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
        specs = field_specs()
        for name in config_fields():
            self.fields[name] = _form_field(name, *specs[name])
        self.config: dict[str, Any] = {}
        self.seeds_list: list[int] = []
        self.valid: ValidExperiment | None = None
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
        values = base_config(preset_name if isinstance(preset_name, str) else "")
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
        """The service layer's checks, on every field that parsed. A field that did not (not
        a number, not a choice) keeps Django's message; its raw value goes to the service so
        that nothing else is checked against a guess (an unknown preset, say)."""
        cleaned = super().clean()
        failed = set(self.errors)

        def value(name: str) -> Any:
            return self.data.get(name) if name in failed else cleaned.get(name)

        overrides = {
            name: cleaned[name]
            for name in config_fields()
            if name not in failed and cleaned.get(name) is not None and cleaned.get(name) != ""
        }
        try:
            self.valid = validate_experiment(
                self.user,
                name=value("name"),
                description=value("description") or "",
                preset=value("preset") or "",
                config=overrides,
                seeds=value("seeds"),
                queue=value("queue"),
                user_dataset=value("user_dataset") or None,
            )
        except ValidationFailed as err:
            self.add_service_errors(err.errors)
            return cleaned
        if not self.errors:
            self.config = overrides
            self.seeds_list = self.valid.seeds
        return cleaned

    def add_service_errors(self, errors: list[FieldError]) -> None:
        """Errors of the service layer on their fields (a Config field's error on its input,
        the config's seed on the seeds); a field that already shows an error keeps it alone."""
        for field, message in errors:
            field = FIELD_ALIASES.get(field, field) if field else None
            if field not in self.fields:
                self.add_error(None, message if field is None else f"{field}: {message}")
            elif field not in self.errors:
                self.add_error(field, message)
