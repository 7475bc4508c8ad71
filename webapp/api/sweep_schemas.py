"""Shapes of /api/sweeps: a new sweep, a sweep with its progress, its configurations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field, StrictInt

from .schemas import (
    INT32_MAX,
    MAX_OVERRIDES,
    ConfigKey,
    Out,
    OverrideValue,
    StrictSchema,
)


class SweepIn(StrictSchema):
    """A search over configurations of one base, each run with every seed."""

    name: str = Field(json_schema_extra={"minLength": 1, "maxLength": 200})
    description: str = Field("", json_schema_extra={"maxLength": 5000})
    preset: str = Field("", description="a name from GET /api/presets; empty: the defaults")
    overrides: dict[ConfigKey, OverrideValue] = Field(
        default_factory=dict,
        max_length=MAX_OVERRIDES,
        description="the base every configuration shares: Config fields changed from the preset",
    )
    space: dict[ConfigKey, dict[str, Any]] = Field(
        description='the fields to vary: {"values": [...]} (grid, or a choice in a search) or '
        '{"low", "high", "log": bool, "type": "int" | "float"} (a range: random or tpe only)',
    )
    method: str = Field("grid", json_schema_extra={"enum": ["grid", "random", "tpe"]})
    trials: StrictInt = Field(0, description="random and tpe: configurations to try")
    parallel: StrictInt = Field(4, description="configurations queued at once (1 to 50)")
    sampler_seed: StrictInt = Field(0, description="the search's seed: same seed, same proposals")
    seeds: list[StrictInt] = Field(
        default_factory=lambda: [0],
        json_schema_extra={
            "minItems": 1,
            "maxItems": 20,
            "items": {"type": "integer", "minimum": 0, "maximum": INT32_MAX},
        },
    )
    queue: str = Field("any", json_schema_extra={"enum": ["gpu", "cpu", "any"]})


class SweepProgressOut(Out):
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    lost: int
    runs: int
    planned_runs: int
    configurations: int
    planned_configurations: int


class SweepOut(Out):
    id: int
    name: str
    description: str
    owner: str
    preset: str
    overrides: dict[str, Any]
    space: dict[str, Any]
    method: str
    trials: int = Field(description="configurations planned (a grid: every combination)")
    parallel: int
    sampler_seed: int
    seeds: list[int]
    queue: str
    status: str = Field(description="active or cancelled (see `finished`)")
    status_reason: str
    finished: bool = Field(description="no run active and nothing more to propose")
    progress: SweepProgressOut
    cloned_from: int | None
    created_at: datetime
    url: str


class SweepPage(Out):
    count: int
    limit: int
    offset: int
    items: list[SweepOut]


class SweepConfigurationOut(Out):
    experiment_id: int
    name: str
    params: dict[str, Any] = Field(description="the values of the varied fields")
    rank: int | None = Field(description="by mean; null while it has no result")
    best: bool
    mean: float | None = Field(description="mean final test accuracy over seeds, fraction")
    ci95: float | None = Field(description="95% CI across seeds (Student's t); null: < 2 seeds")
    std: float | None
    seeds: int = Field(description="seeds with a result")
    runs: int
    active: int


class SweepConfigurationsOut(Out):
    units: str = "fraction"
    ci_method: str
    items: list[SweepConfigurationOut]


class SweepCancelOut(Out):
    cancelled: int = Field(description="queued or lost runs cancelled at once")
    stopping: int = Field(description="running runs asked to stop")
    sweep: SweepOut
