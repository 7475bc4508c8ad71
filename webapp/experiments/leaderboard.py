"""Leaderboards: one per benchmark, ranking configurations by their mean final test accuracy
over seeds.

A benchmark is (dataset, split, ways, shots, transductive). A row is one configuration (the
runs sharing `Run.group_hash`: the config without its seed): the mean of its succeeded seeds'
test accuracies, a 95% confidence interval across seeds (Student's t; none for one seed), the
seeds behind it and the meta-iterations trained. Rows are grouped in SQL from the per-run
summary (`Run.test_accuracy`, `iteration`), never from metric points and never one Python
object per run; only the rows shown load their runs.

Each board also carries the Reptile paper's published number as a reference row. Its ± is the
paper's, and the paper does not say what it is: with 10,000 test tasks a 95% CI over tasks of
an accuracy near 95% would be about ±0.4 points, not ±0.09, so it is not labelled a 95% CI.

Units: accuracies and confidence half-widths are fractions in 0..1 everywhere in code and in the
API; `Row.accuracy_percent` / `ci95_percent` are for display only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from django.db.models import Avg, Case, CharField, Count, F, Max, Min, Sum, Value, When
from django.db.models.fields.json import KT
from django.db.models.functions import Coalesce
from django.urls import reverse

from metatrain import PRESETS
from metatrain.algorithms import ALGORITHMS

from . import leaderboard_cache
from .aggregate import CI_METHOD, from_moments
from .models import Run

PAPER = "Reptile paper (Nichol et al., arXiv:1803.02999 v3)"

# Mini-ImageNet runs use the "imagefolder" dataset; a run pointed at another image folder is a
# different benchmark and must not be ranked against the paper's Mini-ImageNet numbers.
MINIIMAGENET_FOLDERS = {"miniimagenet", "mini-imagenet", "mini_imagenet"}
CUSTOM_IMAGES = "custom"


class Benchmark(NamedTuple):
    dataset: str
    split: str  # omniglot: "paper" | "lake"; imagefolder: "miniimagenet" | "custom"
    ways: int
    shots: int
    transductive: bool

    @property
    def key(self) -> str:
        """A URL-safe slug, e.g. `omniglot-paper-5way-1shot-transductive`."""
        mode = "transductive" if self.transductive else "non-transductive"
        return f"{self.dataset}-{self.split}-{self.ways}way-{self.shots}shot-{mode}"

    @property
    def title(self) -> str:
        if self.dataset == "omniglot":
            data = f"Omniglot ({'Lake' if self.split == 'lake' else 'paper'} split)"
        elif self.dataset == "imagefolder":
            data = "Mini-ImageNet" if self.split == "miniimagenet" else "Image folder (custom)"
        else:
            data = self.dataset
        mode = "transductive" if self.transductive else "non-transductive"
        return f"{data}, {self.ways}-way {self.shots}-shot, {mode}"

    @classmethod
    def from_key(cls, key: str) -> Benchmark:
        """Parse a slug made by `key`; ValueError if it is not one."""
        parts = key.split("-")
        mode = parts[-1]
        if mode == "transductive" and len(parts) >= 2 and parts[-2] == "non":
            transductive, parts = False, parts[:-2]
        elif mode == "transductive":
            transductive, parts = True, parts[:-1]
        else:
            raise ValueError(f"not a benchmark key: {key!r}")
        if (
            len(parts) != 4
            or not all(re.fullmatch(r"[a-z0-9_]+", p) for p in parts[:2])
            or not parts[2].endswith("way")
            or not parts[3].endswith("shot")
        ):
            raise ValueError(f"not a benchmark key: {key!r}")
        try:
            ways, shots = int(parts[2][:-3]), int(parts[3][:-4])
        except ValueError:
            raise ValueError(f"not a benchmark key: {key!r}") from None
        return cls(parts[0], parts[1], ways, shots, transductive)


# The paper's Table 1 and 2 (v3), in percent: (non-transductive, transductive) as (mean, ci95).
_PAPER_PERCENT: dict[tuple[str, str, int, int], tuple[tuple[float, float], tuple[float, float]]] = {
    ("omniglot", "paper", 5, 1): ((95.39, 0.09), (97.68, 0.04)),
    ("omniglot", "paper", 5, 5): ((98.90, 0.10), (99.48, 0.06)),
    ("omniglot", "paper", 20, 1): ((88.14, 0.15), (89.43, 0.14)),
    ("omniglot", "paper", 20, 5): ((96.65, 0.33), (97.12, 0.32)),
    ("imagefolder", "miniimagenet", 5, 1): ((47.07, 0.26), (49.97, 0.32)),
    ("imagefolder", "miniimagenet", 5, 5): ((62.74, 0.37), (65.99, 0.58)),
}

# As fractions, keyed by benchmark.
PAPER_RESULTS: dict[Benchmark, tuple[float, float]] = {}
for (_dataset, _split, _ways, _shots), _pair in _PAPER_PERCENT.items():
    for _transductive, (_mean, _ci) in zip((False, True), _pair, strict=True):
        PAPER_RESULTS[Benchmark(_dataset, _split, _ways, _shots, _transductive)] = (
            round(_mean / 100, 6),
            round(_ci / 100, 6),
        )


# What the paper's ± means is not stated (see the module's docstring): say so wherever it is shown.
REFERENCE_PM = (
    "± as published; the paper does not say what it is (per-task arithmetic says it cannot be a "
    "95% CI over its 10,000 test tasks)"
)
SINGLE_SEED = "one seed: no interval across seeds"
# Rows shown per board (ranked first); the rest are counted. The API may ask for up to MAX_ROWS.
DEFAULT_ROWS = 50
MAX_ROWS = 500

# Meta-iterations the paper trained each benchmark for (its presets): fewer is "partial".
PAPER_META_ITERS: dict[tuple[str, int, int], int] = {
    (p["dataset"], p["ways"], p["shots"]): p["meta_iters"]
    for p in PRESETS.values()
    if p.get("dataset") in ("omniglot", "imagefolder")
}


@dataclass(frozen=True)
class SeedRun:
    """One seed behind a row (read as plain values: a board shows hundreds)."""

    pk: int
    seed: int
    test_accuracy: float
    test_ci95: float | None
    iteration: int
    experiment_id: int

    def get_absolute_url(self) -> str:
        return reverse("run-detail", args=[self.pk])


@dataclass
class Row:
    """One line of a board: a configuration's seeds, or (`is_reference`) the paper's number."""

    accuracy: float  # fraction 0..1: the mean over seeds
    ci95: float | None  # half-width: across seeds (Student's t), or the paper's published ±
    seeds: int = 0
    iterations: int = 0  # meta-iterations trained (the most any of its seeds reached)
    std: float | None = None
    group_hash: str = ""
    is_reference: bool = False
    partial: bool = False  # trained fewer meta-iterations than the paper for this benchmark
    paper_iterations: int | None = None
    label: str = ""
    experiment_id: int | None = None
    owner: str | None = None
    algorithm: str | None = None
    first_run_id: int = 0
    runs: list[SeedRun] = field(default_factory=list)  # the seeds, for the rows shown
    rank: int = 0
    tied_with_leader: bool = False  # this row's interval overlaps the leader's

    @property
    def accuracy_percent(self) -> float:
        return self.accuracy * 100

    @property
    def ci95_percent(self) -> float | None:
        return None if self.ci95 is None else self.ci95 * 100

    @property
    def ci_method(self) -> str:
        """What this row's ± is."""
        if self.is_reference:
            return REFERENCE_PM
        return CI_METHOD if self.ci95 is not None else SINGLE_SEED

    def overlaps(self, other: Row) -> bool:
        """Whether the two intervals overlap (a missing one counts as zero width)."""
        return abs(self.accuracy - other.accuracy) <= (self.ci95 or 0.0) + (other.ci95 or 0.0)


@dataclass
class Board:
    benchmark: Benchmark
    rows: list[Row] = field(default_factory=list)  # ranked; the first `shown` configurations
    configurations: int = 0  # all of them, shown or not
    runs_count: int = 0  # their seeds, all together
    hidden: int = 0  # configurations ranked below the rows shown

    @property
    def key(self) -> str:
        return self.benchmark.key

    @property
    def title(self) -> str:
        return self.benchmark.title


class BoardNotFound(LookupError):
    """No such benchmark: neither a run nor a paper result for it."""


def algorithm_label(name: str) -> str:
    """How metatrain's algorithm registry names the algorithm ``name`` for people (a run of an
    algorithm it no longer knows keeps its stored name)."""
    algorithm = ALGORITHMS.get(name)
    return algorithm.label if algorithm is not None else name


def rank_rows(rows: list[Row]) -> list[Row]:
    """Sort by accuracy (desc), give equal accuracies the same rank ("1, 2, 2, 4"), and flag the
    rows whose interval overlaps the leader's: the leader is not significantly ahead of them."""
    rows = sorted(rows, key=lambda r: (-r.accuracy, r.is_reference, r.first_run_id))
    for i, row in enumerate(rows):
        if i > 0 and row.accuracy == rows[i - 1].accuracy:
            row.rank = rows[i - 1].rank
        else:
            row.rank = i + 1
        row.tied_with_leader = i > 0 and row.overlaps(rows[0])
    return rows


# The benchmark's split, in SQL: an image-folder run counts for Mini-ImageNet when it trains on
# the installed data (no upload, no folder, or a folder named like Mini-ImageNet's).
_MINI_REGEX = r"(^|/)(" + "|".join(sorted(MINIIMAGENET_FOLDERS)) + r")/?$"


def _finished_runs():
    """Succeeded runs with a test accuracy, each with `board_split` (its benchmark's split)."""
    image_split = Case(
        When(experiment__user_dataset__isnull=False, then=Value(CUSTOM_IMAGES)),
        When(data_dir_text="", then=Value("miniimagenet")),
        When(data_dir_text__iregex=_MINI_REGEX, then=Value("miniimagenet")),
        default=Value(CUSTOM_IMAGES),
        output_field=CharField(),
    )
    return (
        Run.objects.filter(
            status=Run.Status.SUCCEEDED,
            test_accuracy__isnull=False,
            ways__isnull=False,
            shots__isnull=False,
        )
        .exclude(dataset="sine")
        .annotate(
            data_dir_text=Coalesce(KT("config__data_dir"), Value(""), output_field=CharField())
        )
        .annotate(
            board_split=Case(
                When(dataset="imagefolder", then=image_split),
                When(split="", then=Value("none")),
                default=F("split"),
                output_field=CharField(),
            )
        )
    )


def _reference_row(benchmark: Benchmark) -> Row | None:
    paper = PAPER_RESULTS.get(benchmark)
    if paper is None:
        return None
    return Row(accuracy=paper[0], ci95=paper[1], is_reference=True, label=PAPER)


def _summaries(runs) -> dict[Benchmark, tuple[int, int]]:
    """(configurations, runs) of every benchmark that has a ranked run: one grouped query."""
    rows = (
        runs.values("dataset", "board_split", "ways", "shots", "transductive")
        .annotate(configurations=Count("group_hash", distinct=True), runs=Count("id"))
        .order_by()
    )
    return {
        Benchmark(r["dataset"], r["board_split"], r["ways"], r["shots"], bool(r["transductive"])): (
            r["configurations"],
            r["runs"],
        )
        for r in rows
    }


def _configurations(runs, benchmark: Benchmark):
    """The benchmark's configurations, aggregated by the database (mean, moments, seeds)."""
    return (
        runs.filter(
            dataset=benchmark.dataset,
            board_split=benchmark.split,
            ways=benchmark.ways,
            shots=benchmark.shots,
            transductive=benchmark.transductive,
        )
        .values("group_hash")
        .annotate(
            n=Count("id"),
            mean=Avg("test_accuracy"),
            total=Sum("test_accuracy"),
            total_sq=Sum(F("test_accuracy") * F("test_accuracy")),
            iterations=Max("iteration"),
            first_run=Min("id"),
        )
        .order_by()
    )


def _row(g: dict, benchmark: Benchmark) -> Row:
    stats = from_moments(g["n"], g["total"], g["total_sq"])
    assert stats is not None  # n >= 1: every group has a run
    paper_iters = PAPER_META_ITERS.get((benchmark.dataset, benchmark.ways, benchmark.shots))
    iterations = g["iterations"] or 0
    return Row(
        accuracy=stats.mean,
        ci95=stats.ci95,
        std=stats.std,
        seeds=stats.n,
        iterations=iterations,
        group_hash=g["group_hash"],
        partial=paper_iters is not None and iterations < paper_iters,
        paper_iterations=paper_iters,
        first_run_id=g["first_run"],
    )


def _build(runs, benchmark: Benchmark, summary: tuple[int, int] | None, limit: int) -> Board:
    """The best `limit` configurations (ranked by the database) and the paper's row, ranked
    among all configurations, shown or not."""
    configurations, runs_count = summary or (0, 0)
    rows: list[Row] = []
    grouped = _configurations(runs, benchmark) if summary else None
    if grouped is not None:
        rows = [_row(g, benchmark) for g in grouped.order_by("-mean", "first_run")[:limit]]
    reference = _reference_row(benchmark)
    ranked = rank_rows([*rows, *([reference] if reference else [])])
    if (
        reference is not None
        and grouped is not None
        and len(rows) < configurations
        and rows
        and reference.accuracy < rows[-1].accuracy
    ):
        # Below every row shown: configurations not shown may rank above it too.
        reference.rank = 1 + grouped.filter(mean__gt=reference.accuracy).count()
    return Board(
        benchmark=benchmark,
        rows=ranked,
        configurations=configurations,
        runs_count=runs_count,
        hidden=configurations - len(rows),
    )


def _fill(boards: list[Board]) -> None:
    """Labels and per-seed runs of the rows shown, two queries for all boards."""
    shown = [row for b in boards for row in b.rows if not row.is_reference]
    if not shown:
        return
    firsts = {
        values[0]: values[1:]
        for values in Run.objects.filter(pk__in=[r.first_run_id for r in shown]).values_list(
            "pk", "experiment_id", "experiment__name", "experiment__owner__username", "algorithm"
        )
    }
    seeds: dict[tuple, list[SeedRun]] = {}
    for values in _seed_values(
        _finished_runs().filter(group_hash__in={r.group_hash for r in shown})
    ):
        seeds.setdefault(values[:6], []).append(SeedRun(*values[6:]))
    for board in boards:
        b = board.benchmark
        for row in board.rows:
            first = firsts.get(row.first_run_id)
            if row.is_reference or first is None:
                continue
            row.experiment_id, name, row.owner, row.algorithm = first
            row.label = f"{name} ({algorithm_label(row.algorithm)})"
            row.runs = seeds.get(
                (row.group_hash, b.dataset, b.split, b.ways, b.shots, b.transductive), []
            )


# The benchmark and configuration a seed belongs to, then SeedRun's fields.
_SEED_COLUMNS = ("group_hash", "dataset", "board_split", "ways", "shots", "transductive")
_SEED_COLUMNS += ("pk", "seed", "test_accuracy", "test_ci95", "iteration", "experiment_id")


def _seed_values(runs):
    return runs.values_list(*_SEED_COLUMNS).order_by("seed", "id")


def seed_runs(benchmark: Benchmark, group_hash: str) -> list[SeedRun]:
    """One configuration's seeds on one board, as its row lists them (`Row.runs`): what the
    leaderboard page fetches when a row's seeds are opened, instead of sending every row's
    seeds with the page (1.2 MB at 10,000 runs)."""
    runs = _finished_runs().filter(
        group_hash=group_hash,
        dataset=benchmark.dataset,
        board_split=benchmark.split,
        ways=benchmark.ways,
        shots=benchmark.shots,
        transductive=benchmark.transductive,
    )
    return [SeedRun(*values[6:]) for values in _seed_values(runs)]


def _order(benchmark: Benchmark) -> tuple:
    datasets = {"omniglot": 0, "imagefolder": 1}
    return (datasets.get(benchmark.dataset, 2), benchmark)


def _limit(limit: int) -> int:
    return max(1, min(MAX_ROWS, limit))


def boards(*, include_reference_only: bool = False, limit: int = DEFAULT_ROWS) -> list[Board]:
    """Every benchmark with at least one ranked configuration (Omniglot first, then
    Mini-ImageNet), each with the paper's row where the paper has one and its best `limit`
    configurations. `include_reference_only` adds the paper's benchmarks nobody has run yet.
    A few grouped queries per benchmark, whatever the number of runs; kept between changes of
    the finished runs (leaderboard_cache)."""
    return leaderboard_cache.kept(
        ("boards", include_reference_only, _limit(limit)),
        lambda: _boards(include_reference_only, limit),
    )


def _boards(include_reference_only: bool, limit: int) -> list[Board]:
    runs = _finished_runs()
    summaries = _summaries(runs)
    keys = set(summaries)
    if include_reference_only:
        keys |= set(PAPER_RESULTS)
    result = [_build(runs, b, summaries.get(b), _limit(limit)) for b in sorted(keys, key=_order)]
    _fill(result)
    return result


def board(key: str | Benchmark, *, limit: int = DEFAULT_ROWS) -> Board:
    """One board by its slug (or Benchmark). Raises BoardNotFound if nothing is known about it;
    a paper benchmark without runs gives a board holding only the reference row."""
    try:
        benchmark = key if isinstance(key, Benchmark) else Benchmark.from_key(key)
    except ValueError as exc:
        raise BoardNotFound(str(exc)) from None
    runs = _finished_runs().filter(
        dataset=benchmark.dataset,
        ways=benchmark.ways,
        shots=benchmark.shots,
        transductive=benchmark.transductive,
    )
    summary = _summaries(runs).get(benchmark)
    if summary is None and benchmark not in PAPER_RESULTS:
        raise BoardNotFound(f"no results for {benchmark.key!r}")
    result = _build(runs, benchmark, summary, _limit(limit))
    _fill([result])
    return result
