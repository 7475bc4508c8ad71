"""Which configurations a sweep tries next.

Grid: the combinations in order. Random: seeded points, the n-th always the same. Adaptive:
Optuna's TPE through its ask-and-tell interface, with a study rebuilt on every call from the
trials the database holds (finished ones with their objective, unfinished ones as running), so
no search state lives in a process: any web or worker process can propose, and a restart
loses nothing. The sampler's seed is the sweep's seed plus the number of trials so far: the
same history always gives the same proposals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .space import GRID, RANDOM, TPE, Dimension, grid_points, grid_size, random_point


@dataclass(frozen=True)
class Trial:
    """A configuration tried so far: its values, and its objective (mean final test accuracy
    over its seeds) once every seed has finished, None while running; `failed` when every
    seed ended without a score."""

    params: dict[str, Any]
    value: float | None = None
    failed: bool = False


def planned(method: str, dims: list[Dimension], trials: int) -> int:
    """How many configurations the sweep tries in all."""
    return grid_size(dims) if method == GRID else trials


def startup_trials(trials: int) -> int:
    """Random trials before TPE models the results: a third of the budget, 2 to 10."""
    return max(2, min(10, trials // 3))


def propose(
    method: str,
    dims: list[Dimension],
    history: list[Trial],
    count: int,
    *,
    seed: int,
    trials: int,
) -> list[dict[str, Any]]:
    """The next `count` configurations after `history` (fewer when the plan runs out)."""
    count = max(0, min(count, planned(method, dims, trials) - len(history)))
    if count == 0:
        return []
    done = len(history)
    if method == GRID:
        return grid_points(dims)[done : done + count]
    if method == RANDOM:
        return [random_point(dims, seed, done + i) for i in range(count)]
    if method == TPE:
        return _tpe(dims, history, count, seed=seed, trials=trials)
    raise ValueError(f"unknown sweep method {method!r}")


def _distributions(dims: list[Dimension]) -> dict[str, Any]:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
    for d in dims:
        if d.values is not None:
            out[d.field] = CategoricalDistribution(list(d.values))
        elif d.kind == "int":
            out[d.field] = IntDistribution(int(d.low), int(d.high), log=d.log)
        else:
            out[d.field] = FloatDistribution(float(d.low), float(d.high), log=d.log)
    return out


def _tpe(
    dims: list[Dimension], history: list[Trial], count: int, *, seed: int, trials: int
) -> list[dict[str, Any]]:
    # Imported here: optuna takes about a second to import, and only adaptive sweeps need it.
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = _distributions(dims)
    sampler = optuna.samplers.TPESampler(
        seed=seed + len(history), n_startup_trials=startup_trials(trials)
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for trial in history:
        params = {k: v for k, v in trial.params.items() if k in distributions}
        if trial.value is not None:
            state, value = TrialState.COMPLETE, trial.value
        else:
            state, value = (TrialState.FAIL if trial.failed else TrialState.RUNNING), None
        study.add_trial(
            create_trial(params=params, distributions=distributions, state=state, value=value)
        )
    # Each ask leaves a running trial in the study, so the next ask knows it is taken.
    return [study.ask(distributions).params for _ in range(count)]
