"""Few-shot data: class datasets (Omniglot, image folders), task samplers, sine tasks.

Public (see docs/metatrain-api.md): ``DataError``, ``omniglot_available``,
``load_class_splits``, ``ClassDataset``, ``ClassSplits``, ``TaskSampler``, ``Task``,
``SineTaskSampler``, ``SineTask``; also ``mini_batches`` (the paper's inner-loop batches).
"""

from .base import ClassDataset, ClassSplits, DataError, RotatedClassDataset, TensorClassDataset
from .imagefolder import ImageFolderDataset, load_imagefolder_splits
from .loading import load_class_splits
from .omniglot import (
    OmniglotData,
    load_omniglot,
    omniglot_available,
    omniglot_names,
    omniglot_splits,
    split_order,
)
from .sine import SineTask, SineTaskSampler
from .tasks import Task, TaskSampler, batch_order, batches_in_order, mini_batches

__all__ = [
    "ClassDataset",
    "ClassSplits",
    "DataError",
    "ImageFolderDataset",
    "OmniglotData",
    "RotatedClassDataset",
    "SineTask",
    "SineTaskSampler",
    "Task",
    "TaskSampler",
    "TensorClassDataset",
    "batch_order",
    "batches_in_order",
    "load_class_splits",
    "load_imagefolder_splits",
    "load_omniglot",
    "mini_batches",
    "omniglot_available",
    "omniglot_names",
    "omniglot_splits",
    "split_order",
]
