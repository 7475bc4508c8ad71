"""The runs list's table rows, each rendered once per content and then reused.

Rendering 25 rows through Django's templates was most of the runs page's time (about 1.5 ms a
row: every cell resolves its variables, includes and filters one by one), and a team's list
is mostly runs that have stopped changing. So each process keeps the HTML of the rows it has
rendered, keyed by everything a row can show: every stored column of the run and of its
experiment (their JSON configs aside: no row shows them), the owner's name and the active time
zone. A row is found again only when none of that changed, so a renamed, re-tagged or
re-evaluated run is rendered afresh and nothing has to be invalidated. Running runs are never
kept: their duration is counted to now.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from django.db import models
from django.db.models.fields.files import FieldFile
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe

from .models import Run

ROW_TEMPLATE = "experiments/_run_row.html"
# The columns a row shows (ROW_TEMPLATE and what it includes): a list reads only these.
ROW_FIELDS = (
    "id", "name", "tags", "seed", "status", "dataset", "ways", "shots", "algorithm",
    "iteration", "total_iterations", "phase", "started_at", "finished_at",
    "seconds_per_iteration", "test_accuracy", "test_ci95", "test_loss_before",
    "test_loss_after", "created_at", "cancel_requested",
    "experiment__id", "experiment__name", "experiment__owner__username",
    "experiment__user_dataset__id",
)  # fmt: skip
# A few pages of many users' lists per process; a row is about 1.5 KB of HTML.
MAX_KEPT_ROWS = 4000


class RowCache:
    """Rendered rows by content, least recently used dropped first. One per process; a lock
    because a threaded server (runserver) shares it between requests."""

    def __init__(self, max_rows: int = MAX_KEPT_ROWS) -> None:
        self.max_rows = max_rows
        self._rows: OrderedDict[tuple, SafeString] = OrderedDict()
        self._lock = threading.Lock()
        self.rendered = 0  # rows rendered (not found): for tests and benchmarks

    def rows(self, runs: Iterable[Run]) -> list[SafeString]:
        """The `<tr>` of each run, in order. `runs` should select_related
        `experiment__owner` (filter_runs does), or each row costs two queries."""
        out = []
        for run in runs:
            if run.status == Run.Status.RUNNING:
                out.append(self._render(run))
                continue
            key = row_key(run)
            with self._lock:
                html = self._rows.get(key)
                if html is not None:
                    self._rows.move_to_end(key)
            if html is None:
                html = self._render(run)
                with self._lock:
                    self._rows[key] = html
                    while len(self._rows) > self.max_rows:
                        self._rows.popitem(last=False)
            out.append(html)
        return out

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()

    def _render(self, run: Run) -> SafeString:
        self.rendered += 1
        return mark_safe(render_to_string(ROW_TEMPLATE, {"run": run}))  # noqa: S308 (template output)


def row_key(run: Run) -> tuple:
    """Everything the row of `run` can show, as one hashable value."""
    experiment = run.experiment
    return (
        _stored_values(run),
        _stored_values(experiment),
        experiment.owner.get_username(),
        timezone.get_current_timezone_name(),
    )


def _stored_values(instance: models.Model) -> tuple:
    deferred = instance.get_deferred_fields()
    return tuple(
        _plain(getattr(instance, field.attname))
        for field in instance._meta.concrete_fields
        if field.attname not in deferred and not isinstance(field, models.JSONField)
    )


def _plain(value: object) -> object:
    # A stored file's value holds its model instance: keep its name, not the instance.
    return value.name if isinstance(value, FieldFile) else value


run_rows = RowCache()
