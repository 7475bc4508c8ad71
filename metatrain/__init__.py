"""metatrain: Reptile and first-order MAML few-shot meta-learning in plain PyTorch.

A faithful re-implementation of openai/supervised-reptile ("On First-Order Meta-Learning
Algorithms", Nichol, Achiam & Schulman, 2018). The public API (docs/metatrain-api.md) is what
this module exports; everything else is private.
"""

from .algorithms import ALGORITHMS
from .checkpoint import load_initialization, save_initialization
from .config import PRESETS, Config, ConfigError, preset, validate_against_data
from .engine.compute import Compute
from .evaluate import evaluate
from .reporting import NullReporter, PrintReporter, Reporter
from .results import EvalResult, TrainResult
from .train import CheckpointMismatchError, train

__all__ = [
    "ALGORITHMS",
    "Compute",
    "Config",
    "ConfigError",
    "PRESETS",
    "preset",
    "validate_against_data",
    "Reporter",
    "NullReporter",
    "PrintReporter",
    "train",
    "TrainResult",
    "CheckpointMismatchError",
    "evaluate",
    "EvalResult",
    "load_initialization",
    "save_initialization",
]
