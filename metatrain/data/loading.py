"""``load_class_splits(config)``: the one entry point the training loop uses for class data."""

from __future__ import annotations

from typing import Any

from .base import ClassSplits
from .imagefolder import load_imagefolder_splits
from .omniglot import load_omniglot, omniglot_splits


def load_class_splits(config: Any) -> ClassSplits:
    """Train / validation / test classes for ``config`` (read by attribute only).

    Uses ``dataset``, ``data_dir``, ``image_size``, ``augment_rotations`` and, for Omniglot,
    ``split``, ``split_seed``, ``split_version`` and ``validation_classes``. For "imagefolder" the validation
    classes are the ``val/`` folder, so ``split``, ``split_seed`` and ``validation_classes``
    are not used. "sine" has no classes: use ``SineTaskSampler``.
    """
    dataset = config.dataset
    if dataset == "omniglot":
        data = load_omniglot(config.data_dir, config.image_size)
        return omniglot_splits(
            data,
            split=config.split,
            split_seed=config.split_seed,
            validation_classes=config.validation_classes,
            augment_rotations=config.augment_rotations,
            split_version=config.split_version,
        )
    if dataset == "imagefolder":
        return load_imagefolder_splits(
            config.data_dir, config.image_size, augment_rotations=config.augment_rotations
        )
    if dataset == "sine":
        raise ValueError("the sine dataset has no classes; sample tasks with SineTaskSampler")
    raise ValueError(f"unknown dataset {dataset!r} (expected 'omniglot', 'imagefolder' or 'sine')")
