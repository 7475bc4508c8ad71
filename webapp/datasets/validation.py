"""Is an extracted folder a usable few-shot dataset? Enough classes, enough images, all decodable.

Pure Python and Pillow, no Django. It reads a folder laid out as metatrain's image-folder loader
expects (``ROOT/{train,val,test}/CLASS/*.png|jpg``) and follows that loader's rules exactly
(hidden entries and non-image files skipped), so a folder that passes here loads there. Every
rejection names the split and class at fault; an image that fails to decode is named by path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .extraction import (
    IMAGE_EXTENSIONS,
    IMAGE_FORMATS,
    LAYOUT_CLASSES,
    LAYOUT_SPLITS,
    SPLIT_PROPORTIONS,
    SPLITS,
    DatasetRejected,
    Limits,
    describe_image_error,
    min_classes_for_split,
)

DEFAULT_MIN_CLASSES = 5
DEFAULT_MIN_IMAGES = 5
# How many offending classes one message lists before "and N more".
_LIST_AT_MOST = 10


@dataclass(frozen=True)
class DatasetSummary:
    """Images per class per split of a valid dataset."""

    classes: dict[str, dict[str, int]]

    def class_count(self, split: str) -> int:
        return len(self.classes[split])

    @property
    def images(self) -> int:
        return sum(sum(by_class.values()) for by_class in self.classes.values())

    @property
    def min_class_images(self) -> int:
        return min((n for by_class in self.classes.values() for n in by_class.values()), default=0)


def validate_dataset(
    root: str | os.PathLike[str],
    *,
    min_classes: int = DEFAULT_MIN_CLASSES,
    min_images: int = DEFAULT_MIN_IMAGES,
    layout: str = LAYOUT_SPLITS,
    max_image_pixels: int = Limits.max_image_pixels,
) -> DatasetSummary:
    """Check the folder and return its counts, or raise DatasetRejected with the reason.

    `layout` only words the messages: for plain class folders (split 64/16/20 by us) a split
    with too few classes means "upload more classes", not "add classes to val/".
    """
    root = Path(root)
    classes = scan_folder(root)
    check_counts(classes, min_classes=min_classes, min_images=min_images, layout=layout)
    check_decodable(root, classes, max_image_pixels=max_image_pixels)
    return DatasetSummary(classes)


def scan_folder(root: Path) -> dict[str, dict[str, int]]:
    """Images per class per split, by the image-folder loader's rules."""
    result: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            raise DatasetRejected("missing_split", f"The dataset has no {split}/ folder.")
        result[split] = {d.name: len(_images(d)) for d in _class_dirs(folder)}
    return result


def check_counts(
    classes: dict[str, dict[str, int]],
    *,
    min_classes: int = DEFAULT_MIN_CLASSES,
    min_images: int = DEFAULT_MIN_IMAGES,
    layout: str = LAYOUT_SPLITS,
) -> None:
    """At least `min_classes` classes in each split, at least `min_images` images per class."""
    for split in SPLITS:
        found = len(classes[split])
        if found >= min_classes:
            continue
        if layout == LAYOUT_CLASSES:
            total = sum(len(c) for c in classes.values())
            percent = "/".join(f"{round(100 * SPLIT_PROPORTIONS[s])}" for s in SPLITS)
            raise DatasetRejected(
                "too_few_classes",
                f"Plain class folders are split {percent} into train/val/test: your {total} "
                f"classes gave {split} {found} class{'es' if found != 1 else ''}, fewer than "
                f"{min_classes}. Upload at least {min_classes_for_split(min_classes)} classes, or "
                "put the classes in your own train/, val/ and test/ folders.",
            )
        names = ", ".join(sorted(classes[split])) or "none"
        raise DatasetRejected(
            "too_few_classes",
            f"The {split}/ folder has {found} class{'es' if found != 1 else ''} ({names}); each of "
            f"train/, val/ and test/ needs at least {min_classes} classes.",
        )
    short = [
        (split, name, n)
        for split in SPLITS
        for name, n in sorted(classes[split].items())
        if n < min_images
    ]
    if short:
        listed = ", ".join(f"{split}/{name} has {n}" for split, name, n in short[:_LIST_AT_MOST])
        more = f", and {len(short) - _LIST_AT_MOST} more" if len(short) > _LIST_AT_MOST else ""
        first_split, first_name, first_n = short[0]
        raise DatasetRejected(
            "too_few_images",
            (
                f"Class '{first_name}' in {first_split}/ has {first_n} image"
                f"{'s' if first_n != 1 else ''}; every class needs at least {min_images}."
                if len(short) == 1
                else f"{len(short)} classes have fewer than {min_images} images each "
                f"({listed}{more})."
            ),
            f"{first_split}/{first_name}",
        )


def check_decodable(
    root: Path, classes: dict[str, dict[str, int]], *, max_image_pixels: int
) -> None:
    """Decode every image fully (`verify()` alone misses a truncated JPEG)."""
    for split in SPLITS:
        for name in sorted(classes[split]):
            for path in _images(root / split / name):
                relative = path.relative_to(root).as_posix()
                try:
                    with Image.open(path, formats=IMAGE_FORMATS) as img:
                        width, height = img.size
                        if width * height > max_image_pixels:
                            raise DatasetRejected(
                                "image_too_large",
                                f"'{relative}' is {width} x {height} pixels; the limit is "
                                f"{max_image_pixels:,} pixels per image.",
                                relative,
                            )
                        img.load()
                except DatasetRejected:
                    raise
                except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ...
                    raise DatasetRejected(
                        "undecodable",
                        f"'{relative}' cannot be decoded as an image "
                        f"({describe_image_error(err, path, relative)}).",
                        relative,
                    ) from err


def _class_dirs(folder: Path) -> list[Path]:
    with os.scandir(folder) as it:
        return sorted(
            Path(e.path)
            for e in it
            if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")
        )


def _images(folder: Path) -> list[Path]:
    with os.scandir(folder) as it:
        return sorted(
            Path(e.path)
            for e in it
            if not e.name.startswith(".")
            and e.name.lower().endswith(IMAGE_EXTENSIONS)
            and e.is_file(follow_symlinks=False)
        )
