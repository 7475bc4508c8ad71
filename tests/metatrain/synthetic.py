"""Tiny synthetic data and configs for the metatrain tests (import tests.metatrain.synthetic)."""

from __future__ import annotations

import numpy as np
import torch

from metatrain import Config
from metatrain.data import ClassSplits, TensorClassDataset


def tiny_config(**changes) -> Config:
    """A config small enough to train in a fraction of a second on ``synthetic_splits``."""
    base = {
        "image_size": 8,
        "ways": 3,
        "shots": 1,
        "queries": 1,
        "train_shots": 4,
        "inner_batch": 6,
        "inner_iters": 2,
        "meta_batch": 2,
        "meta_iters": 6,
        "eval_inner_batch": 3,
        "eval_inner_iters": 2,
        "validation_interval": 2,
        "validation_tasks": 2,
        "checkpoint_interval": 2,
        "final_eval_tasks": 2,
    }
    return Config.from_dict({**base, **changes})


def synthetic_splits(
    seed: int, train: int = 12, test: int = 8, per_class: int = 20, size: int = 8
) -> ClassSplits:
    """Per class a random binary prototype with 10 % of its pixels flipped per example, so
    that few-shot tasks are learnable in a handful of steps."""
    g = np.random.default_rng(seed)
    n = train + test
    protos = g.random((n, 1, 1, size, size)) > 0.5
    flips = g.random((n, per_class, 1, size, size)) < 0.1
    storage = torch.from_numpy((protos ^ flips).astype(np.uint8) * 255)

    def view(ids):
        return TensorClassDataset(storage, ids, [f"c{i}" for i in ids])

    return ClassSplits(train=view(range(train)), validation=view([]), test=view(range(train, n)))
