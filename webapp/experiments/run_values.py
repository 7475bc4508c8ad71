"""A run read as plain column values, for lists that read a page of runs at a time.

Building the page's runs, their experiments, owners and datasets as model instances cost more
than the database took to answer the query (docs/benchmarks.md). A list therefore asks for
`values()` rows and wraps each in a `RunValues`, which carries the model's derived values
(progress, duration, speed...) as the model's own properties: a property works on any object
with the attributes it reads, so each is still defined once, on `Run`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .models import Run


class RunValues:
    """One `values()` row of a run, read like the model: `row.status`, `row.progress`.

    Only the columns the query asked for are there; a property reading one that was not
    asked for raises AttributeError (never a silent query per row)."""

    Status = Run.Status
    Phase = Run.Phase
    progress = Run.progress
    duration_seconds = Run.duration_seconds
    iterations_per_second = Run.iterations_per_second
    eval_eta_seconds = Run.eval_eta_seconds
    tag_list = Run.tag_list

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.__dict__.update(values)

    @property
    def pk(self) -> int:
        return self.id
