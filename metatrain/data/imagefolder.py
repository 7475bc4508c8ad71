"""Class-per-folder image datasets, e.g. Mini-ImageNet as the paper's code reads it.

Layout::

    DIR/train/CLASS/*.jpg|*.jpeg|*.png    (Mini-ImageNet: 64 classes x 600 images, 84x84 RGB)
    DIR/val/CLASS/...                      (16 classes: the validation split)
    DIR/test/CLASS/...                     (20 classes)

Within a class folder, only files with an image extension (.jpg, .jpeg, .png, any case) are
used; other files (README.txt, Thumbs.db) and hidden files (.DS_Store) are skipped silently,
as are sub-folders. A class folder with no image file at all is a DataError, found when the
dataset is built. A file with an image extension that cannot be decoded is a DataError too,
but only when a task first fetches it: images are decoded lazily, on first use, then kept in
memory (uint8) for the rest of the process, so a second pass over the data costs nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .base import (
    ClassDataset,
    ClassSplits,
    DataError,
    RotatedClassDataset,
    resolve_data_dir,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLIT_FOLDERS = ("train", "val", "test")
DEFAULT_FOLDER = "miniimagenet"
EXPECTED_LAYOUT = (
    "DIR/train/CLASS/*.jpg|*.png, DIR/val/CLASS/..., DIR/test/CLASS/... "
    "(one folder per class, at least one image in each)"
)

_LOCK = threading.RLock()
_CLASS_CACHE: dict[tuple[str, int], _LazyClass] = {}


def clear_cache() -> None:
    """Forget every decoded image (tests; or to free memory)."""
    with _LOCK:
        _CLASS_CACHE.clear()


def _is_image(entry: os.DirEntry[str]) -> bool:
    return (
        not entry.name.startswith(".")
        and entry.name.lower().endswith(IMAGE_EXTENSIONS)
        and entry.is_file()
    )


class _LazyClass:
    """The images of one class folder: decoded on first use, then kept (uint8, C x S x S)."""

    def __init__(self, files: tuple[Path, ...], size: int) -> None:
        self.files = files
        self.size = size
        self._storage: np.ndarray | None = None
        self._loaded = np.zeros(len(files), dtype=bool)

    def fetch(self, indices: np.ndarray) -> np.ndarray:
        with _LOCK:
            if self._storage is None:
                self._storage = np.empty((len(self.files), 3, self.size, self.size), np.uint8)
            for i in np.unique(indices[~self._loaded[indices]]):
                self._storage[i] = self._decode(self.files[i])
                self._loaded[i] = True
            images: np.ndarray = self._storage[indices]
            return images

    def _decode(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
                if rgb.size != (self.size, self.size):
                    rgb = rgb.resize((self.size, self.size), Image.Resampling.BICUBIC)
                return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"cannot decode image ({err})", path, "a JPEG or PNG image") from err


def _lazy_class(folder: Path, size: int) -> _LazyClass:
    with os.scandir(folder) as it:
        files = tuple(sorted(Path(e.path) for e in it if _is_image(e)))
    if not files:
        raise DataError("class folder has no image (.jpg, .jpeg, .png)", folder, EXPECTED_LAYOUT)
    key = (str(folder.resolve()), size)
    with _LOCK:
        cached = _CLASS_CACHE.get(key)
        if cached is None or cached.files != files:
            cached = _CLASS_CACHE[key] = _LazyClass(files, size)
        return cached


class ImageFolderDataset(ClassDataset):
    """One class per folder; images resized to ``image_size`` square RGB, float32 in [0, 1]."""

    def __init__(self, class_dirs: Sequence[str | os.PathLike[str]], image_size: int) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        dirs = [Path(d) for d in class_dirs]
        self._classes = [_lazy_class(d, image_size) for d in dirs]
        self._names = [d.name for d in dirs]
        self._sizes = np.array([len(c.files) for c in self._classes], dtype=np.int64)
        self._size = image_size

    @classmethod
    def from_split_folder(
        cls, folder: str | os.PathLike[str], image_size: int
    ) -> ImageFolderDataset:
        """Every non-hidden sub-folder of ``folder`` is a class (sorted by name)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError("split folder is missing", folder, EXPECTED_LAYOUT)
        with os.scandir(folder) as it:
            dirs = sorted(Path(e.path) for e in it if e.is_dir() and not e.name.startswith("."))
        if not dirs:
            raise DataError("split folder has no class folder", folder, EXPECTED_LAYOUT)
        return cls(dirs, image_size)

    @property
    def names(self) -> list[str]:
        return self._names

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self._size, self._size)

    def class_sizes(self) -> np.ndarray:
        return self._sizes

    def files(self, i: int) -> tuple[Path, ...]:
        """The image files of class ``i``, in index order."""
        self._check_class(i)
        return self._classes[i].files

    def gather_uint8(self, classes: np.ndarray, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(classes), *self.image_shape), dtype=np.uint8)
        for c in np.unique(classes):
            rows = np.flatnonzero(classes == c)
            out[rows] = self._classes[c].fetch(indices[rows])
        return out


def load_imagefolder_splits(
    data_dir: str | os.PathLike[str] | None,
    image_size: int = 84,
    augment_rotations: bool = False,
) -> ClassSplits:
    """train/ -> train (x4 with rotations if asked), val/ -> validation, test/ -> test.

    ``data_dir`` None means ``$METATRAIN_DATA/miniimagenet``.
    """
    root = resolve_data_dir(data_dir, DEFAULT_FOLDER)
    if not root.is_dir():
        raise DataError("the image folder does not exist", root, EXPECTED_LAYOUT)
    train, val, test = (
        ImageFolderDataset.from_split_folder(root / name, image_size) for name in SPLIT_FOLDERS
    )
    return ClassSplits(
        train=RotatedClassDataset(train) if augment_rotations else train,
        validation=val,
        test=test,
    )
