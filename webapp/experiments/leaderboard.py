"""Leaderboards: one per benchmark, ranking succeeded runs by their final test accuracy.

A benchmark is (dataset, split, ways, shots, transductive). Each board also carries the Reptile
paper's published number for that benchmark as a reference row, so a run can be read against it.
Rows are read from the per-run summary (`Run.test_accuracy`, `test_ci95`, `test_tasks`), never
from metric points.

Units: accuracies and confidence half-widths are fractions in 0..1 everywhere in code and in the
API; `Row.accuracy_percent` / `ci95_percent` are for display only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import NamedTuple

from metatrain.algorithms import ALGORITHMS

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


@dataclass
class Row:
    """One line of a board. `run` is None for the paper's reference row."""

    run: Run | None
    accuracy: float  # fraction 0..1
    ci95: float | None  # half-width of the 95% interval, fraction
    tasks: int | None
    is_reference: bool = False
    label: str = ""
    rank: int = 0
    tied_with_leader: bool = False  # this row's 95% interval overlaps the leader's

    @property
    def accuracy_percent(self) -> float:
        return self.accuracy * 100

    @property
    def ci95_percent(self) -> float | None:
        return None if self.ci95 is None else self.ci95 * 100

    def overlaps(self, other: Row) -> bool:
        """Whether the two 95% intervals overlap (a missing CI counts as zero width)."""
        return abs(self.accuracy - other.accuracy) <= (self.ci95 or 0.0) + (other.ci95 or 0.0)


@dataclass
class Board:
    benchmark: Benchmark
    rows: list[Row] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.benchmark.key

    @property
    def title(self) -> str:
        return self.benchmark.title

    @property
    def runs_count(self) -> int:
        return sum(1 for row in self.rows if not row.is_reference)


class BoardNotFound(LookupError):
    """No such benchmark: neither a run nor a paper result for it."""


def _image_split(config: dict) -> str:
    data_dir = config.get("data_dir")
    if not data_dir or PurePath(str(data_dir)).name.lower() in MINIIMAGENET_FOLDERS:
        return "miniimagenet"
    return CUSTOM_IMAGES


def benchmark_of(run: Run) -> Benchmark | None:
    """The benchmark a finished run counts for, or None (sine regression has no accuracy)."""
    if run.ways is None or run.shots is None or run.dataset == "sine":
        return None
    is_images = run.dataset == "imagefolder"
    split = _image_split(run.config or {}) if is_images else (run.split or "none")
    return Benchmark(run.dataset, split, run.ways, run.shots, bool(run.transductive))


def algorithm_label(name: str) -> str:
    """How metatrain's algorithm registry names the algorithm ``name`` for people (a run of an
    algorithm it no longer knows keeps its stored name)."""
    algorithm = ALGORITHMS.get(name)
    return algorithm.label if algorithm is not None else name


def _run_label(run: Run) -> str:
    return f"{run.experiment.name} (seed {run.seed}, {algorithm_label(run.algorithm)})"


def rank_rows(rows: list[Row]) -> list[Row]:
    """Sort by accuracy (desc), give equal accuracies the same rank ("1, 2, 2, 4"), and flag the
    rows whose interval overlaps the leader's: the leader is not significantly ahead of them."""
    rows = sorted(
        rows, key=lambda r: (-r.accuracy, r.is_reference, r.run.pk if r.run is not None else 0)
    )
    for i, row in enumerate(rows):
        if i > 0 and row.accuracy == rows[i - 1].accuracy:
            row.rank = rows[i - 1].rank
        else:
            row.rank = i + 1
        row.tied_with_leader = i > 0 and row.overlaps(rows[0])
    return rows


def _finished_runs():
    return (
        Run.objects.filter(status=Run.Status.SUCCEEDED, test_accuracy__isnull=False)
        .exclude(dataset="sine")
        .select_related("experiment__owner")
        .order_by("id")
    )


def _reference_row(benchmark: Benchmark) -> Row | None:
    paper = PAPER_RESULTS.get(benchmark)
    if paper is None:
        return None
    return Row(
        run=None, accuracy=paper[0], ci95=paper[1], tasks=None, is_reference=True, label=PAPER
    )


def _build(runs_by_benchmark: dict[Benchmark, list[Run]], benchmark: Benchmark) -> Board:
    rows = [
        Row(
            run=run,
            accuracy=run.test_accuracy,
            ci95=run.test_ci95,
            tasks=run.test_tasks,
            label=_run_label(run),
        )
        for run in runs_by_benchmark.get(benchmark, [])
    ]
    reference = _reference_row(benchmark)
    if reference is not None:
        rows.append(reference)
    return Board(benchmark=benchmark, rows=rank_rows(rows))


def _group(runs) -> dict[Benchmark, list[Run]]:
    grouped: dict[Benchmark, list[Run]] = {}
    for run in runs:
        benchmark = benchmark_of(run)
        if benchmark is not None:
            grouped.setdefault(benchmark, []).append(run)
    return grouped


def _order(benchmark: Benchmark) -> tuple:
    datasets = {"omniglot": 0, "imagefolder": 1}
    return (datasets.get(benchmark.dataset, 2), benchmark)


def boards(*, include_reference_only: bool = False) -> list[Board]:
    """Every benchmark with at least one ranked run (Omniglot first, then Mini-ImageNet), each
    with the paper's row where the paper has one. `include_reference_only` adds the paper's
    benchmarks nobody has run yet."""
    grouped = _group(_finished_runs())
    keys = set(grouped)
    if include_reference_only:
        keys |= set(PAPER_RESULTS)
    return [_build(grouped, b) for b in sorted(keys, key=_order)]


def board(key: str | Benchmark) -> Board:
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
    grouped = _group(runs)
    if benchmark not in grouped and benchmark not in PAPER_RESULTS:
        raise BoardNotFound(f"no results for {benchmark.key!r}")
    return _build(grouped, benchmark)
