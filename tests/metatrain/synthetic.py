"""Tiny synthetic class splits for the metatrain tests (imported as tests.metatrain.synthetic)."""

from __future__ import annotations

import numpy as np
import torch

from metatrain.data import ClassSplits, TensorClassDataset


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
