"""What a training run and an evaluation report back: plain dataclasses."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["EvalResult", "TrainResult"]


@dataclass
class EvalResult:
    """The outcome of an evaluation over ``tasks`` tasks.

    ``accuracy``: mean over tasks of the fraction of queries classified correctly (0..1);
    ``ci95``: half-width of its 95 % confidence interval (``ci_method`` says how), None with
    fewer than two tasks. Sine: ``accuracy`` None, ``loss_before``/``loss_after`` the mean
    squared errors, ``ci95`` for ``loss_after``. ``stopped``: a stop request cut the evaluation
    short (``tasks`` counts the tasks done). ``inner_optimizer_state``: what each task's inner
    optimizer started from: "training" (the training run's Adam moments, live during
    validation or from checkpoint.pt), "fresh", or "stateless" (SGD).
    """

    accuracy: float | None
    ci95: float | None
    tasks: int
    ways: int | None
    shots: int
    queries: int | None
    transductive: bool
    split: str
    ci_method: str
    loss_before: float | None = None
    loss_after: float | None = None
    stopped: bool = False
    inner_optimizer_state: str = "fresh"
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """How far training got. ``stopped``: a stop request ended it early (resumable)."""

    iterations_done: int
    total_iterations: int
    stopped: bool
    out_dir: str
