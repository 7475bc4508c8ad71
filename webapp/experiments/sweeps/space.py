"""The fields a sweep varies and the values each may take.

Stored (Sweep.space) and sent to the API as a mapping from a metatrain Config field to either
``{"values": [...]}`` (a list: every value in a grid, a choice in a search) or
``{"low": a, "high": b, "log": bool, "type": "int" | "float"}`` (a range, searches only).
The form writes the same thing as text, one field a line::

    inner_lr = 0.0001, 0.001, 0.001     (a list)
    outer_lr_start = 0.1 .. 1.0         (a linear float range)
    inner_lr = 1e-5 .. 1e-2 log         (a log range)
    inner_iters = 5 .. 20 int           (an integer range)
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ErrorList
from ..validation import override_problem

MAX_FIELDS = 8
MAX_VALUES = 100
GRID, RANDOM, TPE = "grid", "random", "tpe"


@dataclass(frozen=True)
class Dimension:
    """One varied field: a list of `values`, or a range [low, high] of `kind` int or float."""

    field: str
    values: tuple[Any, ...] | None = None
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    kind: str = "float"

    @property
    def is_range(self) -> bool:
        return self.values is None

    def corners(self) -> list[Any]:
        """The values to check before anything is saved: every listed value, a range's ends."""
        if self.values is not None:
            return list(self.values)
        return [self.low, self.high]

    def sample(self, rng: random.Random) -> Any:
        if self.values is not None:
            return self.values[rng.randrange(len(self.values))]
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        if self.kind == "int":
            return int(min(self.high, max(self.low, round(value))))
        return value

    def to_json(self) -> dict[str, Any]:
        if self.values is not None:
            return {"values": list(self.values)}
        return {"low": self.low, "high": self.high, "log": self.log, "type": self.kind}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _dimension(field: str, spec: object, method: str, errors: ErrorList) -> Dimension | None:
    where = f"space.{field}"
    problem = override_problem(field, None)
    if problem or field in ("seed", "data_dir"):
        errors.add(where, problem or f"{field} cannot be swept.")
        return None
    if not isinstance(spec, Mapping):
        errors.add(where, 'Give {"values": [...]} or {"low", "high", "log", "type"}.')
        return None
    if "values" in spec:
        values = spec["values"]
        if not isinstance(values, list) or not values:
            errors.add(where, "values must be a non-empty list.")
            return None
        if len(values) > MAX_VALUES:
            errors.add(where, f"At most {MAX_VALUES} values per field.")
            return None
        for value in values:
            bad = override_problem(field, value)
            if bad:
                errors.add(where, f"{field} = {value!r}: {bad}")
                return None
        if len({json.dumps(v) for v in values}) != len(values):
            errors.add(where, "values must be distinct.")
            return None
        return Dimension(field, values=tuple(values))
    if method == GRID:
        errors.add(where, "A grid needs a list of values for each field, not a range.")
        return None
    low, high, log, kind = spec.get("low"), spec.get("high"), spec.get("log", False), None
    kind = spec.get("type") or (
        "int" if isinstance(low, int) and isinstance(high, int) else "float"
    )
    if not (_number(low) and _number(high)):
        errors.add(where, "A range needs numbers low and high.")
    elif kind not in ("int", "float"):
        errors.add(where, 'type must be "int" or "float".')
    elif not isinstance(log, bool):
        errors.add(where, "log must be true or false.")
    elif not low < high:  # type: ignore[operator]
        errors.add(where, f"low ({low}) must be below high ({high}).")
    elif log and low <= 0:  # type: ignore[operator]
        errors.add(where, "A log range needs low > 0.")
    elif kind == "int" and not (float(low).is_integer() and float(high).is_integer()):  # type: ignore[arg-type]
        errors.add(where, "An int range needs whole numbers low and high.")
    else:
        if kind == "int":
            low, high = int(low), int(high)  # type: ignore[call-overload]
        for end in (low, high):
            bad = override_problem(field, end)
            if bad:
                errors.add(where, f"{field} = {end!r}: {bad}")
                return None
        return Dimension(field, low=low, high=high, log=log, kind=kind)  # type: ignore[arg-type]
    return None


def parse_space(raw: object, method: str) -> tuple[list[Dimension], ErrorList]:
    """The dimensions of `raw` (the JSON form), and every problem found (fields `space.<f>`,
    or `space`)."""
    errors = ErrorList()
    if not isinstance(raw, Mapping) or not raw:
        errors.add("space", "Choose at least one field to vary.")
        return [], errors
    if len(raw) > MAX_FIELDS:
        errors.add("space", f"Vary at most {MAX_FIELDS} fields.")
        return [], errors
    dims = [_dimension(str(field), spec, method, errors) for field, spec in raw.items()]
    return [d for d in dims if d is not None], errors


def space_json(dims: list[Dimension]) -> dict[str, Any]:
    return {d.field: d.to_json() for d in dims}


def grid_size(dims: list[Dimension]) -> int:
    return math.prod(len(d.values or ()) for d in dims)


def grid_points(dims: list[Dimension]) -> list[dict[str, Any]]:
    """Every combination, the last field varying fastest."""
    names = [d.field for d in dims]
    return [
        dict(zip(names, combo, strict=True))
        for combo in itertools.product(*(d.values or () for d in dims))
    ]


def random_point(dims: list[Dimension], seed: int, index: int) -> dict[str, Any]:
    """The `index`-th random configuration of a sweep seeded with `seed`: the same on every
    call and every host (its generator is seeded by both numbers, nothing carried over)."""
    rng = random.Random(f"sweep-{seed}-{index}")
    return {d.field: d.sample(rng) for d in dims}


# ------------------------------------------------------------------------------------------
# The form's text
# ------------------------------------------------------------------------------------------
def _scalar(text: str) -> Any:
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered in ("none", "null"):
            return None
        return text.strip("'\"")


def parse_space_text(text: str) -> tuple[dict[str, Any], list[str]]:
    """The JSON form of the form's text, and a message per line it cannot read."""
    space: dict[str, Any] = {}
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        field, sep, rest = line.partition("=")
        field, rest = field.strip(), rest.strip()
        if not sep or not field or not rest:
            problems.append(f"Line {number}: write field = values, or field = low .. high.")
            continue
        if field in space:
            problems.append(f"Line {number}: {field} is given twice.")
            continue
        if ".." in rest:
            bounds, *flags = rest.split()
            if len(bounds.split("..")) != 2:  # "1e-4 .. 1e-2": rejoin the spaced form
                bounds, flags = "".join(rest.split()[:3]), rest.split()[3:]
            low_text, _, high_text = bounds.partition("..")
            low, high = _scalar(low_text), _scalar(high_text)
            unknown = [f for f in flags if f not in ("log", "int", "float")]
            if unknown or not _number(low) or not _number(high):
                problems.append(
                    f"Line {number}: a range is low .. high, optionally followed by log, "
                    "int or float."
                )
                continue
            spec: dict[str, Any] = {"low": low, "high": high, "log": "log" in flags}
            if "int" in flags or "float" in flags:
                spec["type"] = "int" if "int" in flags else "float"
            space[field] = spec
        else:
            space[field] = {"values": [_scalar(part) for part in rest.split(",")]}
    return space, problems


def space_text(space: Mapping[str, Any]) -> str:
    """The form's text for a stored space (a clone's starting point)."""
    lines = []
    for field, spec in space.items():
        if "values" in spec:
            lines.append(f"{field} = " + ", ".join(json.dumps(v) for v in spec["values"]))
        else:
            flags = (" log" if spec.get("log") else "") + f" {spec.get('type', 'float')}"
            lines.append(f"{field} = {spec['low']} .. {spec['high']}{flags}")
    return "\n".join(lines)
