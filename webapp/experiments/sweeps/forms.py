"""The sweep form: a base (preset, the experiment form's values as JSON overrides), the fields
to vary as text (see space.py), the method, and the seeds. `clean()` runs the service's own
check (`service.plan_sweep`), so the page can show the number of runs before anything is
saved and refuse a sweep over SWEEP_MAX_RUNS."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.conf import settings

from metatrain import PRESETS

from ..errors import FieldError, ValidationFailed
from ..forms import parse_seeds
from ..models import Queue, Sweep
from .service import SweepPlan, plan_sweep
from .space import parse_space_text, space_text

SPACE_HELP = (
    "One field a line. A list: inner_lr = 0.0001, 0.001, 0.01. A range (random or adaptive "
    "search): inner_lr = 1e-5 .. 1e-2 log, or inner_iters = 5 .. 20 int."
)


class SweepForm(forms.Form):
    name = forms.CharField(max_length=200)
    description = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}), required=False, max_length=5000
    )
    preset = forms.ChoiceField(required=False)
    base_config = forms.CharField(
        label="base settings",
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "class": "mono"}),
        help_text='JSON overrides of the preset every configuration shares, e.g. {"meta_iters": '
        "2000}.",
    )
    space = forms.CharField(
        label="fields to vary",
        widget=forms.Textarea(attrs={"rows": 5, "class": "mono"}),
        help_text=SPACE_HELP,
    )
    method = forms.ChoiceField(choices=Sweep.Method.choices, initial=Sweep.Method.GRID)
    trials = forms.IntegerField(
        required=False,
        min_value=1,
        help_text="Random and adaptive search: configurations to try (a grid tries all).",
    )
    parallel = forms.IntegerField(
        initial=4,
        min_value=1,
        help_text="Configurations queued at once; an adaptive search proposes the next ones "
        "from the results of those that finished.",
    )
    sampler_seed = forms.IntegerField(
        initial=0, min_value=0, label="search seed", help_text="Same seed, same proposals."
    )
    seeds = forms.CharField(
        initial="0, 1, 2", max_length=400, help_text="Every configuration runs with each seed."
    )
    queue = forms.ChoiceField(choices=Queue.choices, initial=Queue.ANY)

    def __init__(self, *args, user=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["preset"].choices = [("", "none: the library's defaults")] + [
            (name, name) for name in PRESETS
        ]
        self.plan: SweepPlan | None = None
        self.spec: dict[str, Any] = {}

    @classmethod
    def initial_from_sweep(cls, sweep: Sweep) -> dict[str, Any]:
        """Initial data that reproduces `sweep` (for cloning)."""
        return {
            "name": f"{sweep.name} (copy)"[:200],
            "description": sweep.description,
            "preset": sweep.preset if sweep.preset in PRESETS else "",
            "base_config": json.dumps(sweep.base_config, indent=1) if sweep.base_config else "",
            "space": space_text(sweep.space),
            "method": sweep.method,
            "trials": sweep.trials if sweep.method != Sweep.Method.GRID else None,
            "parallel": sweep.parallel,
            "sampler_seed": sweep.sampler_seed,
            "seeds": ", ".join(str(s) for s in sweep.seeds),
            "queue": sweep.queue,
        }

    def clean_seeds(self) -> list[int]:
        return parse_seeds(self.cleaned_data["seeds"])

    def clean_base_config(self) -> dict[str, Any]:
        raw = (self.cleaned_data.get("base_config") or "").strip()
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except ValueError as err:
            raise forms.ValidationError(f"Not valid JSON: {err}") from None
        if not isinstance(value, dict):
            raise forms.ValidationError('Give a JSON object, like {"meta_iters": 2000}.')
        return value

    def clean_space(self) -> dict[str, Any]:
        space, problems = parse_space_text(self.cleaned_data["space"])
        if problems:
            raise forms.ValidationError(problems)
        return space

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.errors:
            return cleaned
        self.spec = {
            "name": cleaned["name"],
            "description": cleaned.get("description") or "",
            "preset": cleaned.get("preset") or "",
            "config": cleaned["base_config"],
            "space": cleaned["space"],
            "method": cleaned["method"],
            "trials": cleaned.get("trials") or 0,
            "parallel": cleaned["parallel"],
            "sampler_seed": cleaned["sampler_seed"],
            "seeds": cleaned["seeds"],
            "queue": cleaned["queue"],
        }
        try:
            self.plan = plan_sweep(self.user, **self.spec)
        except ValidationFailed as err:
            self.add_service_errors(err.errors)
        return cleaned

    def add_service_errors(self, errors: list[FieldError]) -> None:
        """A varied field's error on the space; a base Config field's on the base settings."""
        for field, message in errors:
            if field and field.startswith("space"):
                field = "space"
            elif field == "seed":
                field = "seeds"
            elif field and field not in self.fields:
                message, field = f"{field}: {message}", "base_config"
            self.add_error(field if field in self.fields else None, message)

    @property
    def run_limit(self) -> int:
        return settings.SWEEP_MAX_RUNS
