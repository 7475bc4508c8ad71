"""Request and response shapes of the API.

Inputs are strict about their shape: unknown keys are refused, integers are not strings or
floats, floats must be finite, query strings may not hold NUL characters (PostgreSQL refuses
them). A new experiment's values (lengths, seeds, the preset, the queue, every config field)
are checked by the service layer, the same function the browser form uses, which reports every
error at once: their limits are documented in the schema but not enforced here, or a bad name
would hide a bad learning rate. Outputs state their units: accuracies and their 95% confidence
half-widths are fractions in 0..1, rounded to 6 decimal places.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from ninja import Schema
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, WithJsonSchema
from pydantic_core import PydanticCustomError

INT32_MAX = 2**31 - 1
PK_MAX = 2**63 - 1
MAX_OVERRIDES = 100
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
    """A config override is a JSON scalar: the service checks its range and meaning."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PydanticCustomError("finite_number", "must be a finite number")
        return value
    raise PydanticCustomError("override_type", "must be a number, string, boolean or null")


OverrideValue = Annotated[
    Any,
    AfterValidator(_check_override),
    WithJsonSchema({"type": ["number", "integer", "string", "boolean", "null"]}),
]
# Any key: an unknown one is reported by the service with the other errors.
ConfigKey = Annotated[str, WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 64})]
# Any text that reaches a query: PostgreSQL refuses NUL characters with an error (a 500).
Text = Annotated[str, AfterValidator(_no_nul)]


class StrictSchema(Schema):
    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    """An answer's shape. The endpoints build answers as dicts, so a plain pydantic model
    validates them in pydantic's compiled core: ninja's Schema wraps every input in a Python
    attribute getter (for ORM objects) that costs about 4 ms on a page of 25 runs, a fifth of
    the request. `from_attributes` still lets an object with the fields through."""

    model_config = ConfigDict(from_attributes=True)


class ExperimentIn(StrictSchema):
    """A new experiment: a preset (optional) plus config overrides, run once per seed."""

    # Limits in json_schema_extra are documented here and enforced by the service.
    name: str = Field(json_schema_extra={"minLength": 1, "maxLength": 200})
    description: str = Field("", json_schema_extra={"maxLength": 5000})
    preset: str = Field(
        "",
        description="a name from GET /api/presets; empty: the Config defaults",
        json_schema_extra={"maxLength": 64},
    )
    overrides: dict[ConfigKey, OverrideValue] = Field(
        default_factory=dict,
        max_length=MAX_OVERRIDES,
        description="metatrain Config fields to change (not `seed`: use `seeds`; not "
        "`data_dir`: use `user_dataset`); integers within +-2,147,483,647",
    )
    seeds: list[StrictInt] = Field(
        default_factory=lambda: [0],
        description="one run per seed: 1 to 20 distinct whole numbers",
        json_schema_extra={
            "minItems": 1,
            "maxItems": 20,
            "items": {"type": "integer", "minimum": 0, "maximum": INT32_MAX},
        },
    )
    queue: str = Field("any", json_schema_extra={"enum": ["gpu", "cpu", "any"]})
    user_dataset: StrictInt | None = Field(
        None,
        description="id of an uploaded dataset to train on (GET /api/datasets lists those you "
        "may use); needs overrides.dataset (or the preset's) = imagefolder",
        json_schema_extra={
            "anyOf": [{"type": "integer", "minimum": 1, "maximum": PK_MAX}, {"type": "null"}]
        },
    )


class FieldErrorOut(Out):
    field: str | None
    message: str


class ValidationErrorOut(Out):
    detail: list[FieldErrorOut]


class MessageOut(Out):
    detail: str


class QuotaErrorOut(Out):
    detail: str = Field(description="what the limit is, your usage, and what to do")
    quota: str = Field(description="the server setting, e.g. QUOTA_MAX_ACTIVE_RUNS")
    limit: int
    usage: int = Field(description="what you have now, in the limit's unit")
    requested: int = Field(description="what the refused request would add")


class RunOut(Out):
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
    test_accuracy: float | None = Field(description="fraction 0..1 (not percent), 6 decimals")
    test_ci95: float | None = Field(description="95% CI half-width, fraction 0..1, 6 decimals")
    test_tasks: int | None
    has_initialization: bool
    user_dataset: int | None = Field(description="id of the uploaded dataset it trains on")
    user_dataset_name: str | None = Field(
        description="that dataset's name; null without one, or when it is private to another user"
    )
    can_change: bool = Field(description="whether the caller may cancel or delete it")
    can_cancel: bool = Field(description="whether a cancel would change it (queued, running, lost)")
    name: str = Field(description="the name its owner gave it (empty: none)")
    notes: str
    tags: list[str]
    phase: str = Field(description="training, or evaluating (the final test evaluation)")
    eval_tasks_done: int = Field(description="final evaluation tasks done")
    eval_tasks_total: int = Field(description="final evaluation tasks in all (0 before it)")
    eval_tasks_per_second: float | None
    eval_eta_seconds: float | None = Field(
        description="remaining final evaluation time, while it runs"
    )
    duration_seconds: float | None = Field(description="from the first claim to the end (or now)")
    iterations_per_second: float | None = Field(description="meta-iterations per second")
    test_loss_before: float | None = Field(
        description="sine regression: final test loss (MSE) before adaptation"
    )
    test_loss_after: float | None = Field(
        description="sine regression: final test loss (MSE) after adaptation"
    )
    can_evaluate_now: bool = Field(
        description="a cancelled or failed run with a checkpoint: POST .../evaluate applies"
    )
    has_checkpoint_weights: bool = Field(
        description="GET .../initialization serves its last checkpoint's weights (it stopped "
        "before its final evaluation)"
    )


class RunDetailOut(RunOut):
    config: dict[str, Any] = Field(description="metatrain Config; never a server path (data_dir)")
    config_hash: str


class RunPage(Out):
    count: int
    limit: int
    offset: int
    items: list[RunOut]


class ExperimentOut(Out):
    id: int
    name: str
    description: str
    preset: str
    owner: str
    config: dict[str, Any] = Field(
        description="metatrain Config, seed and server paths (data_dir) excluded"
    )
    seeds: list[int]
    queue: str
    cloned_from: int | None
    user_dataset: int | None = Field(description="id of the uploaded dataset it trains on")
    user_dataset_name: str | None = Field(
        description="that dataset's name; null without one, or when it is private to another user"
    )
    created_at: datetime
    can_change: bool
    notes: str
    tags: list[str]
    runs: list[RunOut]


class LabelsIn(StrictSchema):
    """Rename, annotate or tag an experiment or a run; a field left out stays as it is."""

    name: Text | None = Field(None, json_schema_extra={"maxLength": 200})
    notes: Text | None = Field(None, json_schema_extra={"maxLength": 10000})
    tags: list[Annotated[Text, Field(max_length=100)]] | None = Field(
        None, max_length=50, description="replaces the tags; lowercased, duplicates dropped"
    )


class DatasetOut(Out):
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


class DatasetPage(Out):
    count: int
    limit: int
    offset: int
    items: list[DatasetOut]


class ExperimentPage(Out):
    count: int
    limit: int
    offset: int
    items: list[ExperimentOut]


class SeriesOut(Out):
    steps: list[int]
    values: list[float | None] = Field(
        description="value at each step (bucket's last step), 7 significant digits"
    )
    min: list[float | None]
    max: list[float | None]
    last_step: int | None
    downsampled: bool


class MetricsOut(Out):
    run: int
    names: list[str] = Field(description="every series the run has")
    series: dict[str, SeriesOut]


class EvaluationOut(Out):
    id: int
    split: str
    iteration: int
    accuracy: float | None = Field(description="fraction 0..1, 6 decimals")
    ci95: float | None = Field(description="95% CI half-width, fraction 0..1, 6 decimals")
    tasks: int
    ways: int | None
    shots: int | None
    queries: int | None
    transductive: bool
    ci_method: str
    extra: dict[str, Any]
    created_at: datetime


class LeaderboardRunOut(Out):
    run_id: int
    seed: int
    experiment_id: int
    accuracy: float | None = Field(description="final test accuracy, fraction 0..1")
    ci95: float | None = Field(description="95% CI over this run's test tasks, fraction")
    iteration: int = Field(description="meta-iterations trained")


class LeaderboardRowOut(Out):
    """One configuration (runs sharing a config without its seed), or the paper's number."""

    rank: int
    label: str
    is_reference: bool = Field(description="the paper's published number, not a run")
    accuracy: float = Field(description="mean over seeds, fraction 0..1, 6 decimals")
    ci95: float | None = Field(
        description="half-width: 95% CI across seeds (Student's t); null for one seed; for the "
        "reference row the paper's published ±, which the paper does not define"
    )
    ci_method: str = Field(description="what ci95 is")
    std: float | None = Field(description="sample standard deviation across seeds")
    seeds: int = Field(description="succeeded seeds averaged")
    iterations: int = Field(description="meta-iterations trained")
    partial: bool = Field(description="trained fewer meta-iterations than the paper did")
    paper_iterations: int | None
    tied_with_leader: bool = Field(description="interval overlaps the leader's")
    group_hash: str | None = Field(description="the configuration's hash without its seed")
    experiment_id: int | None
    owner: str | None
    algorithm: str | None
    runs: list[LeaderboardRunOut] = Field(description="the seeds behind the row")


class BoardOut(Out):
    key: str
    title: str
    dataset: str
    split: str
    ways: int
    shots: int
    transductive: bool
    configurations: int = Field(description="configurations ranked on this board")
    runs_count: int = Field(description="their succeeded runs")
    hidden: int = Field(description="configurations ranked below the rows returned")
    rows: list[LeaderboardRowOut]


class LeaderboardOut(Out):
    units: Literal["fraction"] = "fraction"
    boards: list[BoardOut]


class PresetOut(Out):
    name: str
    config: dict[str, Any] = Field(description="the complete Config of the preset")


class PresetsOut(Out):
    presets: list[PresetOut]
    field_help: dict[str, str] = Field(description="one line of help per Config field")
