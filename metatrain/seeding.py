"""Every random stream of a run, derived from ``config.seed``.

Nothing in metatrain uses the global ``random``, ``numpy.random`` or ``torch`` generators:
each consumer gets its own generator from here, keyed by a fixed stream number. That keeps
streams independent (evaluating more often does not change which training tasks are drawn)
and makes a run reproducible and resumable from a saved generator state.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch

__all__ = [
    "train_rng",
    "eval_rng",
    "init_generator",
    "numpy_state",
    "set_numpy_state",
]

# Fixed stream identifiers: changing one changes every run's randomness.
_STREAM_TRAIN = 1
_STREAM_INIT = 2
_STREAM_EVAL = 3


def train_rng(seed: int) -> np.random.Generator:
    """Training tasks and their inner-loop mini-batches (one stream, saved in checkpoints)."""
    return np.random.default_rng([_STREAM_TRAIN, seed])


def eval_rng(seed: int, split: str) -> np.random.Generator:
    """Evaluation tasks on ``split``: depends only on (seed, split), never on training progress,
    so the same seed always evaluates a model on the same tasks."""
    return np.random.default_rng([_STREAM_EVAL, seed, zlib.crc32(split.encode("utf-8"))])


def init_generator(seed: int) -> torch.Generator:
    """A CPU torch generator for the network's initial weights."""
    seq = np.random.SeedSequence([_STREAM_INIT, seed])
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1)))
    return g


def numpy_state(rng: np.random.Generator) -> dict[str, Any]:
    """The generator's state as a JSON-serialisable dict (Python ints, strings)."""
    state: dict[str, Any] = _plain(rng.bit_generator.state)
    return state


def set_numpy_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Restore a state produced by ``numpy_state``."""
    rng.bit_generator.state = state


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    return value
