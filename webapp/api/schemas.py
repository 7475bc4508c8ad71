"""Request and response shapes of the API.

Inputs are strict: unknown keys are refused, integers are not strings or floats, floats must be
finite, strings are bounded and may not hold NUL characters (PostgreSQL refuses them), and
integers fit the database's 32-bit columns. Outputs state their units: accuracies and their 95%
confidence half-widths are fractions in 0..1.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from ninja import Schema
from pydantic import AfterValidator, ConfigDict, Field, StrictInt, WithJsonSchema
from pydantic_core import PydanticCustomError

INT32_MAX = 2**31 - 1
PK_MAX = 2**63 - 1
MAX_OVERRIDES = 100
MAX_STRING = 1000
PAGE_LIMIT_MAX = 200


class FieldErrors(Exception):
    """Raised by endpoints for input that is well-formed but invalid: 422 naming the fields."""

    def __init__(self, errors: list[tuple[str | None, str]]) -> None:
        super().__init__(errors)
        self.errors = errors


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "must not contain NUL characters")
    return value


def _check_override(value: Any) -> Any:
    """A config override is a JSON scalar: the Config validates its meaning afterwards."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise PydanticCustomError("string_too_long", f"at most {MAX_STRING} characters")
        return _no_nul(value)
    if isinstance(value, int):
        if abs(value) > INT32_MAX:
            raise PydanticCustomError(
                "int_out_of_range", f"integers must lie within +-{INT32_MAX:,}"
            )
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PydanticCustomError("finite_number", "must be a finite number")
        return value
    raise PydanticCustomError("override_type", "must be a number, string, boolean or null")


def _bounded_str(max_length: int, min_length: int = 0):
    return Annotated[
        str,
        Field(min_length=min_length, max_length=max_length),
        AfterValidator(_no_nul),
    ]


OverrideValue = Annotated[
    Any,
    AfterValidator(_check_override),
    WithJsonSchema({"type": ["number", "integer", "string", "boolean", "null"]}),
]
ConfigKey = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_no_nul)]
# Any text that reaches a query: PostgreSQL refuses NUL characters with an error (a 500).
Text = Annotated[str, AfterValidator(_no_nul)]
Seed = Annotated[StrictInt, Field(ge=0, le=INT32_MAX)]


class StrictSchema(Schema):
    model_config = ConfigDict(extra="forbid")


class ExperimentIn(StrictSchema):
    """A new experiment: a preset (optional) plus config overrides, run once per seed."""

    name: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_no_nul)]
    description: _bounded_str(5000) = ""  # type: ignore[valid-type]
    preset: _bounded_str(64) = Field(  # type: ignore[valid-type]
        "", description="a name from GET /api/presets; empty: the Config defaults"
    )
    overrides: dict[ConfigKey, OverrideValue] = Field(
        default_factory=dict,
        max_length=MAX_OVERRIDES,
        description="metatrain Config fields to change (not `seed`: use `seeds`)",
    )
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1, max_length=20)
    queue: Literal["gpu", "cpu", "any"] = "any"
    user_dataset: Annotated[StrictInt, Field(ge=1, le=PK_MAX)] | None = Field(
        None,
        description="id of an uploaded dataset to train on (GET /api/datasets lists those you "
        "may use); needs overrides.dataset (or the preset's) = imagefolder",
    )


class FieldErrorOut(Schema):
    field: str | None
    message: str


class ValidationErrorOut(Schema):
    detail: list[FieldErrorOut]


class MessageOut(Schema):
    detail: str


class RunOut(Schema):
    id: int
    experiment_id: int
    experiment_name: str
    owner: str
    seed: int
    status: str
    status_reason: str
    cancel_requested: bool
    queue: str
    dataset: str
    split: str
    algorithm: str
    ways: int | None
    shots: int | None
    transductive: bool
    iteration: int
    total_iterations: int
    progress: float = Field(description="fraction 0..1 of meta-iterations done")
    checkpoint_iteration: int
    seconds_per_iteration: float | None
    device: str
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    test_accuracy: float | None = Field(description="fraction 0..1 (not percent)")
    test_ci95: float | None = Field(description="95% CI half-width, fraction 0..1")
    test_tasks: int | None
    has_initialization: bool
    can_change: bool = Field(description="whether the caller may cancel or delete it")


class RunDetailOut(RunOut):
    config: dict[str, Any]
    config_hash: str


class RunPage(Schema):
    count: int
    limit: int
    offset: int
    items: list[RunOut]


class ExperimentOut(Schema):
    id: int
    name: str
    description: str
    preset: str
    owner: str
    config: dict[str, Any] = Field(description="metatrain Config, seed excluded")
    seeds: list[int]
    queue: str
    cloned_from: int | None
    user_dataset: int | None = Field(description="id of the uploaded dataset it trains on")
    created_at: datetime
    can_change: bool
    runs: list[RunOut]


class DatasetOut(Schema):
    id: int
    name: str
    owner: str
    is_public: bool
    status: Literal["pending", "validating", "ready", "rejected"]
    usable: bool = Field(description="ready: experiments may train on it (user_dataset)")
    reason: str = Field(description="why it was rejected")
    layout: str = Field(description="splits (train/val/test given) or classes (split for you)")
    train_classes: int
    val_classes: int
    test_classes: int
    max_ways: int = Field(description="classes in the smallest split: the largest `ways`")
    images: int
    min_class_images: int = Field(
        description="images in the smallest class: the most shots + queries (and train_shots)"
    )
    uncompressed_bytes: int
    created_at: datetime
    finished_at: datetime | None
    can_change: bool = Field(description="whether the caller may delete it")


class DatasetPage(Schema):
    count: int
    limit: int
    offset: int
    items: list[DatasetOut]


class ExperimentPage(Schema):
    count: int
    limit: int
    offset: int
    items: list[ExperimentOut]


class SeriesOut(Schema):
    steps: list[int]
    values: list[float | None] = Field(description="value at each step (bucket's last step)")
    min: list[float | None]
    max: list[float | None]
    last_step: int | None
    downsampled: bool


class MetricsOut(Schema):
    run: int
    names: list[str] = Field(description="every series the run has")
    series: dict[str, SeriesOut]


class EvaluationOut(Schema):
    id: int
    split: str
    iteration: int
    accuracy: float | None = Field(description="fraction 0..1")
    ci95: float | None = Field(description="95% CI half-width, fraction 0..1")
    tasks: int
    ways: int | None
    shots: int | None
    queries: int | None
    transductive: bool
    ci_method: str
    extra: dict[str, Any]
    created_at: datetime


class LeaderboardRowOut(Schema):
    rank: int
    label: str
    is_reference: bool = Field(description="the paper's published number, not a run")
    accuracy: float = Field(description="fraction 0..1")
    ci95: float | None = Field(description="95% CI half-width, fraction 0..1")
    tasks: int | None
    tied_with_leader: bool = Field(description="95% interval overlaps the leader's")
    run_id: int | None
    experiment_id: int | None
    owner: str | None
    seed: int | None
    algorithm: str | None


class BoardOut(Schema):
    key: str
    title: str
    dataset: str
    split: str
    ways: int
    shots: int
    transductive: bool
    rows: list[LeaderboardRowOut]


class LeaderboardOut(Schema):
    units: Literal["fraction"] = "fraction"
    boards: list[BoardOut]


class PresetOut(Schema):
    name: str
    config: dict[str, Any] = Field(description="the complete Config of the preset")


class PresetsOut(Schema):
    presets: list[PresetOut]
    field_help: dict[str, str] = Field(description="one line of help per Config field")


# --- model -> response data ------------------------------------------------------------------


def run_data(run, user) -> dict[str, Any]:
    """A Run as RunOut data; `run.experiment.owner` should be select_related."""
    from webapp.experiments.access import can_change

    return {
        "id": run.pk,
        "experiment_id": run.experiment_id,
        "experiment_name": run.experiment.name,
        "owner": run.experiment.owner.get_username(),
        "seed": run.seed,
        "status": run.status,
        "status_reason": run.status_reason,
        "cancel_requested": run.cancel_requested,
        "queue": run.queue,
        "dataset": run.dataset,
        "split": run.split,
        "algorithm": run.algorithm,
        "ways": run.ways,
        "shots": run.shots,
        "transductive": run.transductive,
        "iteration": run.iteration,
        "total_iterations": run.total_iterations,
        "progress": run.progress,
        "checkpoint_iteration": run.checkpoint_iteration,
        "seconds_per_iteration": run.seconds_per_iteration,
        "device": run.device,
        "attempts": run.attempts,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "heartbeat_at": run.heartbeat_at,
        "test_accuracy": run.test_accuracy,
        "test_ci95": run.test_ci95,
        "test_tasks": run.test_tasks,
        "has_initialization": bool(run.initialization),
        "can_change": can_change(user, run),
    }


def run_detail_data(run, user) -> dict[str, Any]:
    return {**run_data(run, user), "config": run.config, "config_hash": run.config_hash}


def experiment_data(experiment, user) -> dict[str, Any]:
    """An Experiment with its runs; prefetch `runs` to avoid a query per experiment."""
    from webapp.experiments.access import can_change

    runs = sorted(experiment.runs.all(), key=lambda r: r.pk)
    for run in runs:
        run.experiment = experiment  # owner already loaded
    return {
        "id": experiment.pk,
        "name": experiment.name,
        "description": experiment.description,
        "preset": experiment.preset,
        "owner": experiment.owner.get_username(),
        "config": experiment.config,
        "seeds": experiment.seeds,
        "queue": experiment.queue,
        "cloned_from": experiment.cloned_from_id,
        "user_dataset": experiment.user_dataset_id,
        "created_at": experiment.created_at,
        "can_change": can_change(user, experiment),
        "runs": [run_data(run, user) for run in runs],
    }


def dataset_data(dataset, user) -> dict[str, Any]:
    """A UserDataset as DatasetOut data; `dataset.owner` should be select_related."""
    from webapp.datasets.access import can_change

    return {
        "id": dataset.pk,
        "name": dataset.name,
        "owner": dataset.owner.get_username(),
        "is_public": dataset.is_public,
        "status": dataset.status,
        "usable": dataset.is_ready,
        "reason": dataset.reason,
        "layout": dataset.layout,
        "train_classes": dataset.train_classes,
        "val_classes": dataset.val_classes,
        "test_classes": dataset.test_classes,
        "max_ways": min(dataset.train_classes, dataset.val_classes, dataset.test_classes),
        "images": dataset.images,
        "min_class_images": dataset.min_class_images,
        "uncompressed_bytes": dataset.uncompressed_bytes,
        "created_at": dataset.created_at,
        "finished_at": dataset.finished_at,
        "can_change": can_change(user, dataset),
    }


def board_data(board) -> dict[str, Any]:
    b = board.benchmark
    return {
        "key": board.key,
        "title": board.title,
        "dataset": b.dataset,
        "split": b.split,
        "ways": b.ways,
        "shots": b.shots,
        "transductive": b.transductive,
        "rows": [
            {
                "rank": row.rank,
                "label": row.label,
                "is_reference": row.is_reference,
                "accuracy": row.accuracy,
                "ci95": row.ci95,
                "tasks": row.tasks,
                "tied_with_leader": row.tied_with_leader,
                "run_id": row.run.pk if row.run else None,
                "experiment_id": row.run.experiment_id if row.run else None,
                "owner": row.run.experiment.owner.get_username() if row.run else None,
                "seed": row.run.seed if row.run else None,
                "algorithm": row.run.algorithm if row.run else None,
            }
            for row in board.rows
        ],
    }
