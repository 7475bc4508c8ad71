"""Class-structured datasets: the common interface every few-shot data source implements.

A few-shot task needs "k images of class c", nothing more, so a dataset is a list of classes,
each a numbered list of images. Images are kept as uint8 (values 0..255) and converted to
float32 in [0, 1] only for the few images a task fetches: that keeps a whole dataset small in
memory and makes each fetch one gather.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATA_ENV_VAR = "METATRAIN_DATA"


class DataError(ValueError):
    """A dataset is missing or not laid out as expected.

    The message names the offending path and the layout that was expected, so that a user can
    fix their data folder from the message alone. ``path`` and ``expected`` are kept as
    attributes for callers (the dashboard) that want to show them separately.
    """

    def __init__(
        self, problem: str, path: str | os.PathLike[str] | None = None, expected: str | None = None
    ) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        self.expected = expected
        message = problem
        if self.path is not None:
            message += f" (path: {self.path})"
        if expected:
            message += f". Expected: {expected}"
        super().__init__(message)

    def __reduce__(  # keep path/expected when pickled across processes
        self,
    ) -> tuple[type[DataError], tuple[str, str | None, str | None]]:
        return (type(self), (self.problem, self.path, self.expected))


def resolve_data_dir(data_dir: str | os.PathLike[str] | None, folder: str) -> Path:
    """The dataset's own folder: ``data_dir`` if given, else ``$METATRAIN_DATA/<folder>``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    root = os.environ.get(DATA_ENV_VAR, "")
    if not root:
        raise DataError(
            f"no data folder given and the environment variable {DATA_ENV_VAR} is not set; "
            f"set {DATA_ENV_VAR} to the folder that holds '{folder}/' or pass data_dir",
            expected=f"${DATA_ENV_VAR}/{folder}/",
        )
    return Path(root).expanduser() / folder


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 0..255 -> float32 tensor in [0, 1] (exact for 0 and 255: Omniglot stays binary).

    Done in NumPy, like the gathers: a task's few images are too small to gain from
    PyTorch's intra-op threads, and on a busy CPU those threads made sampling 20x slower.
    """
    return torch.from_numpy(np.divide(images, np.float32(255.0), dtype=np.float32))


class ClassDataset(ABC):
    """A list of classes, each a list of same-shaped images.

    Subclasses implement ``names``, ``image_shape``, ``class_sizes`` and ``gather_uint8``; the
    rest follows. ``gather`` is the hot path: it fetches many (class, index) pairs in one call.
    """

    @property
    @abstractmethod
    def names(self) -> list[str]:
        """One human-readable name per class (e.g. ``"Latin/character01+rot90"``)."""

    @property
    @abstractmethod
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""

    @abstractmethod
    def class_sizes(self) -> np.ndarray:
        """int64 array: the number of images of each class."""

    @abstractmethod
    def gather_uint8(self, classes: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Images ``indices[k]`` of classes ``classes[k]`` as a uint8 array (n, C, H, W).

        Both arguments are 1-D int64 arrays of the same length n.
        """

    def gather(self, classes: np.ndarray, indices: np.ndarray) -> torch.Tensor:
        """Images ``indices[k]`` of classes ``classes[k]`` as float32 (n, C, H, W) in [0, 1].

        Both arguments are 1-D integer arrays of the same length n. One call per task: this
        is the sampler's hot path.
        """
        classes = np.asarray(classes, dtype=np.int64).reshape(-1)
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if classes.shape != indices.shape:
            raise ValueError(f"{classes.size} classes but {indices.size} indices")
        return to_float(self.gather_uint8(classes, indices))

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def class_size(self, i: int) -> int:
        self._check_class(i)
        return int(self.class_sizes()[i])

    def images(self, i: int, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Images ``indices`` of class ``i`` as float32 (n, C, H, W) in [0, 1]."""
        self._check_class(i)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        size = int(self.class_sizes()[i])
        if idx.size and (idx.min() < 0 or idx.max() >= size):
            raise IndexError(f"class {i} has {size} images; indices out of range: {idx.tolist()}")
        return self.gather(np.full(idx.shape, i, dtype=np.int64), idx)

    def _check_class(self, i: int) -> None:
        if not 0 <= i < self.num_classes:
            raise IndexError(f"class index {i} out of range (dataset has {self.num_classes})")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, image_shape={self.image_shape})"
        )


class TensorClassDataset(ClassDataset):
    """Classes that all have the same number of images, stored densely in one uint8 tensor.

    ``storage`` (uint8 tensor or array, shared, not copied) has shape (num_stored_classes,
    images_per_class, C, H, W); ``class_ids`` picks
    which stored classes this dataset exposes and in which order, so that train, validation and
    test splits are views on one shared storage (no copies).
    """

    def __init__(
        self,
        storage: torch.Tensor | np.ndarray,
        class_ids: Sequence[int] | np.ndarray,
        names: Sequence[str],
    ) -> None:
        if isinstance(storage, torch.Tensor):
            storage = storage.numpy()
        if storage.dtype != np.uint8 or storage.ndim != 5:
            raise ValueError("storage must be uint8 of shape (classes, images, C, H, W)")
        ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
        if len(names) != len(ids):
            raise ValueError(f"{len(names)} names for {len(ids)} classes")
        if ids.size and (ids.min() < 0 or ids.max() >= storage.shape[0]):
            raise ValueError("class_ids out of range of the storage")
        self._storage = storage
        self._flat = storage.reshape(-1, *storage.shape[2:])  # one image per row (a view)
        self._ids = ids
        self._per_class = int(storage.shape[1])
        self._names = list(names)
        self._sizes = np.full(len(ids), storage.shape[1], dtype=np.int64)

    @property
    def names(self) -> list[str]:
        return self._names

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self._storage.shape[2:]
        return (int(c), int(h), int(w))

    def class_sizes(self) -> np.ndarray:
        return self._sizes

    def gather_uint8(self, classes: np.ndarray, indices: np.ndarray) -> np.ndarray:
        images: np.ndarray = self._flat[self._ids[classes] * self._per_class + indices]
        return images


class RotatedClassDataset(ClassDataset):
    """Each class of ``base`` becomes four classes: rotated by 0, 90, 180 and 270 degrees.

    The rotated copies are virtual: images are stored once and rotated when fetched, with
    ``numpy.rot90`` (identical to ``torch.rot90(x, k, dims=(-2, -1))``: counter-clockwise, like
    the paper's PIL ``Image.rotate``). Class ``4*i + r`` is base
    class ``i`` rotated by ``90*r`` degrees, the order of the paper's ``augment_dataset``.
    """

    ROTATIONS = (0, 90, 180, 270)

    def __init__(self, base: ClassDataset) -> None:
        _, h, w = base.image_shape
        if h != w:
            raise ValueError(f"rotation augmentation needs square images, got {h}x{w}")
        self._base = base
        self._names = [
            name if deg == 0 else f"{name}+rot{deg}"
            for name in base.names
            for deg in self.ROTATIONS
        ]
        self._sizes = np.repeat(base.class_sizes(), len(self.ROTATIONS))

    @property
    def base(self) -> ClassDataset:
        return self._base

    @property
    def names(self) -> list[str]:
        return self._names

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._base.image_shape

    def class_sizes(self) -> np.ndarray:
        return self._sizes

    def gather_uint8(self, classes: np.ndarray, indices: np.ndarray) -> np.ndarray:
        out = self._base.gather_uint8(classes // 4, indices)
        quarter_turns = classes % 4
        for k in (1, 2, 3):
            rows = np.flatnonzero(quarter_turns == k)
            if rows.size:
                out[rows] = np.rot90(out[rows], k, axes=(-2, -1))
        return out


@dataclass(frozen=True)
class ClassSplits:
    """The three disjoint class sets of an experiment."""

    train: ClassDataset
    validation: ClassDataset
    test: ClassDataset

    def summary(self) -> dict[str, int]:
        """Number of classes per split (for logs and the dashboard)."""
        return {
            "train": self.train.num_classes,
            "validation": self.validation.num_classes,
            "test": self.test.num_classes,
        }
