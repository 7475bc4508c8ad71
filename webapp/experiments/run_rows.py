"""The runs list's table rows, each rendered once per content and then reused.

Rendering 25 rows through Django's templates was most of the runs page's time (about 1.5 ms a
row: every cell resolves its variables, includes and filters one by one), and a team's list
is mostly runs that have stopped changing. So each process keeps the HTML of the rows it has
rendered, keyed by everything a row can show: the columns the row template reads (ROW_FIELDS:
the run's, its experiment's and its owner's name) and the active time zone. A row is found
again only when none of that changed, so a renamed, re-tagged or re-evaluated run is rendered
afresh and nothing has to be invalidated. Running runs are never kept: their duration is
counted to now. The list reads its page as plain values, which is all a kept row needs: model
instances, which cost more than the query, are built only for the rows rendered.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from django.db.models import QuerySet
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

    def rows(self, page: Sequence[Mapping[str, Any]], runs: QuerySet[Run]) -> list[SafeString]:
        """The `<tr>` of each run of `page`, in order. `page` holds `values(*ROW_FIELDS)` rows,
        so a page whose rows are all kept builds no model instance; the runs to render (new
        content, or running) are read from `runs` in one query, which should select_related
        `experiment__owner` (filter_runs does). A run deleted meanwhile is left out."""
        zone = timezone.get_current_timezone_name()
        found: dict[int, SafeString] = {}
        to_render = []
        for row in page:
            html = None
            if row["status"] != Run.Status.RUNNING:
                html = self._kept((tuple(row[name] for name in ROW_FIELDS), zone))
            if html is None:
                to_render.append(row["id"])
            else:
                found[row["id"]] = html
        if to_render:
            for run in runs.only(*ROW_FIELDS).filter(pk__in=to_render):
                found[run.pk] = html = self._render(run)
                # Kept under what was rendered, which may be newer than the page's row.
                if run.status != Run.Status.RUNNING:
                    self._keep((row_values(run), zone), html)
        return [found[row["id"]] for row in page if row["id"] in found]

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()

    def _kept(self, key: tuple) -> SafeString | None:
        with self._lock:
            html = self._rows.get(key)
            if html is not None:
                self._rows.move_to_end(key)
            return html

    def _keep(self, key: tuple, html: SafeString) -> None:
        with self._lock:
            self._rows[key] = html
            while len(self._rows) > self.max_rows:
                self._rows.popitem(last=False)

    def _render(self, run: Run) -> SafeString:
        self.rendered += 1
        return mark_safe(render_to_string(ROW_TEMPLATE, {"run": run}))  # noqa: S308 (template output)


def row_values(run: Run) -> tuple:
    """A loaded run's ROW_FIELDS, as `values(*ROW_FIELDS)` gives them for the same content."""
    return tuple(_follow(run, name) for name in ROW_FIELDS)


def _follow(value: Any, path: str) -> Any:
    for name in path.split("__"):
        if value is None:
            return None
        value = getattr(value, name)
    return value


run_rows = RowCache()
