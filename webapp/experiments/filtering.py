"""The runs list's filters, one function for the runs page and GET /api/runs.

Both doors read the same names: `status`, `dataset`, `algorithm`, `owner` (a username, or
`me`), `q` (text in the run's or experiment's name, description or notes; the API also still
accepts its old name, `search`), `tag` (the run's or its experiment's) and `sort`. Each door parses its own query string (the page ignores values it
does not know, the API refuses them with a 422) and hands the result to `filter_runs`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet

from .models import Experiment, Run, normalize_tags
from .skip_scan import distinct_values_cte

# key -> (label, ordering)
SORTS: dict[str, tuple[str, list]] = {
    "newest": ("Newest first", ["-created_at", "-id"]),
    "oldest": ("Oldest first", ["created_at", "id"]),
    "accuracy": ("Best test accuracy", [F("test_accuracy").desc(nulls_last=True), "-id"]),
    "name": ("Experiment name", ["experiment__name", "seed", "-id"]),
    "status": ("Status", ["status", "-created_at"]),
}
DEFAULT_SORT = "newest"
# `owner=me`: the caller's own runs (a user named "me" is found by the other filters).
OWNER_ME = "me"


@dataclass(frozen=True)
class RunFilters:
    """Empty strings mean "any"."""

    status: str = ""
    dataset: str = ""
    algorithm: str = ""
    owner: str = ""
    q: str = ""
    tag: str = ""
    sort: str = DEFAULT_SORT

    @classmethod
    def from_query(cls, params) -> RunFilters:
        """Lenient, for pages: unknown statuses and sorts are ignored, text is stripped."""
        values = {f.name: (params.get(f.name) or "").strip() for f in fields(cls)}
        if values["status"] not in Run.Status.values:
            values["status"] = ""
        if values["sort"] not in SORTS:
            values["sort"] = DEFAULT_SORT
        return cls(**values)

    @property
    def active(self) -> bool:
        """Whether anything narrows the list (the sort does not)."""
        return any((self.status, self.dataset, self.algorithm, self.owner, self.q, self.tag))


# Columns no list shows (the JSON ones are the widest): leaving them out spares reading and
# decoding them for every row. A run's own page and downloads read them (get_run_for_user).
UNLISTED = (
    "config",
    "experiment__config",
    "experiment__description",
    "experiment__sweep_params",
    "experiment__owner__password",
    "experiment__user_dataset__class_split",
)


def filter_runs(user, filters: RunFilters, runs: QuerySet[Run] | None = None) -> QuerySet[Run]:
    """`runs` (default: every run, which every logged-in user may read) narrowed and ordered
    by `filters`, with the experiment, its owner and its uploaded dataset loaded."""
    if runs is None:
        runs = Run.objects.all()
    runs = runs.select_related("experiment__owner", "experiment__user_dataset").defer(*UNLISTED)
    if filters.status:
        runs = runs.filter(status=filters.status)
    if filters.dataset:
        runs = runs.filter(dataset=filters.dataset)
    if filters.algorithm:
        runs = runs.filter(algorithm=filters.algorithm)
    if filters.owner == OWNER_ME:
        runs = runs.filter(experiment__owner=user)
    elif filters.owner:
        runs = runs.filter(experiment__owner__username=filters.owner)
    text = filters.q.strip()
    if text:
        runs = runs.filter(
            Q(experiment__name__icontains=text)
            | Q(experiment__description__icontains=text)
            | Q(experiment__notes__icontains=text)
            | Q(name__icontains=text)
            | Q(notes__icontains=text)
        )
    tag = tag_lookup(filters.tag)
    if tag:
        runs = runs.filter(Q(tags__contains=tag) | Q(experiment__tags__contains=tag))
    sort = filters.sort if filters.sort in SORTS else DEFAULT_SORT
    return runs.order_by(*SORTS[sort][1])


def tag_lookup(tag: str) -> str:
    """The stored form one tag is matched by (",word,"); empty for no tag."""
    return normalize_tags([tag])


def filter_experiments(q: str = "", tag: str = "", owner: str = "", user=None) -> QuerySet:
    """The experiments list (page and API): text in the name, description or notes, a tag,
    an owner (`me` for the caller's own); newest first, with owner and run counts loaded."""
    experiments = Experiment.objects.select_related("owner", "user_dataset").annotate(
        run_count=Count("runs"),
        active_runs=Count("runs", filter=Q(runs__status__in=Run.ACTIVE_STATUSES)),
    )
    text = q.strip()
    if text:
        experiments = experiments.filter(
            Q(name__icontains=text) | Q(description__icontains=text) | Q(notes__icontains=text)
        )
    stored = tag_lookup(tag)
    if stored:
        experiments = experiments.filter(tags__contains=stored)
    if owner == OWNER_ME and user is not None:
        experiments = experiments.filter(owner=user)
    elif owner and owner != OWNER_ME:
        experiments = experiments.filter(owner__username=owner)
    return experiments.order_by("-created_at", "-id")


def dataset_names() -> list[str]:
    """Every dataset some run trains on, sorted: the runs page's dataset menu. One probe of the
    dataset index per dataset (skip_scan), where a DISTINCT read every run (10 ms at 10,000)."""
    cte = distinct_values_cte("datasets", Run._meta.db_table, "dataset")
    with connection.cursor() as cursor:
        cursor.execute(f"{cte} SELECT value FROM datasets WHERE value IS NOT NULL")
        return sorted(row[0] for row in cursor.fetchall())


def owner_names() -> list[str]:
    """The usernames of everyone with an experiment, sorted: the runs page's owner menu. One
    index probe per user, not a join over every experiment."""
    sql, params = _owner_names_sql()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


@functools.cache
def _owner_names_sql() -> tuple[str, tuple]:
    # Compiled once: the query never changes, and building it through the ORM on every runs
    # page cost several times what the database takes to answer it.
    owners = get_user_model().objects.filter(
        Exists(Experiment.objects.filter(owner=OuterRef("pk")))
    )
    return owners.order_by("username").values_list("username", flat=True).query.sql_with_params()
