"""Safe extraction of a user's zip of class folders into a dataset folder.

Pure Python and Pillow, no Django: the worker calls it, and it is unit-tested directly against a
corpus of hostile archives (tests/webapp/datasets/hostile_archives.py).

A zip is data from a stranger. Everything in it is checked before a byte is written (steps 1-3,
in `zipcheck`), and again while it is written (step 4, here), because a zip's headers can lie:

1. Before opening it with `zipfile` (which parses the whole central directory into memory): the
   archive's size, and the entry count and central-directory size in its end record.
2. Every entry, from the central directory: its name (no `..`, no absolute path, no drive letter,
   no backslash, no control character, no name over 255 bytes), its type (no symbolic link or
   other special file), no encryption, a known compression method, no duplicate name (compared
   ignoring case), no two entries sharing their data (overlapping entries, a zip-bomb trick), and
   the *declared* sizes: per file, in total, and per-file compression ratio.
3. The layout, from the names: either ``train/CLASS/IMAGE``, ``val/...``, ``test/...`` or plain
   ``CLASS/IMAGE`` folders (then the classes are split 64/16/20 into train/val/test by a seeded
   shuffle, as Mini-ImageNet is, and the split is recorded), optionally inside one wrapper folder.
   Files must be .png/.jpg/.jpeg; nested archives and other files are refused. Finder and
   Explorer litter (``__MACOSX/``, hidden files, ``Thumbs.db``, ``desktop.ini``) is skipped.
4. While extracting: each member is streamed through a counting reader that aborts as soon as
   the bytes really produced pass the per-file, total, or compression-ratio limits (never trusting
   the header sizes alone); then the file is opened with Pillow, restricted to PNG and JPEG, its
   pixel count checked, and `verify()` run.

Files are written only into a fresh temporary folder next to the destination, under names built
from checked components (opened with O_EXCL | O_NOFOLLOW), so nothing lands outside it. Only when
everything is valid (including the caller's `check`, e.g. the class counts) is the folder moved
into place with one `os.replace`; on any rejection or error the temporary folder is deleted and a
`DatasetRejected` names what is wrong, which member, and which limit.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import uuid
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from PIL import Image, UnidentifiedImageError

from .zipcheck import (
    EXPECTED_LAYOUT,
    IMAGE_EXTENSIONS,
    IMAGE_FORMATS,
    LAYOUT_CLASSES,
    LAYOUT_SPLITS,
    MANIFEST_NAME,
    SPLIT_PROPORTIONS,
    SPLITS,
    DatasetRejected,
    Limits,
    Member,
    check_total_ratio,
    format_size,
    min_classes_for_split,
    open_zip,
    plan_archive,
    precheck,
    split_classes,
)

__all__ = [
    "EXPECTED_LAYOUT",
    "IMAGE_EXTENSIONS",
    "IMAGE_FORMATS",
    "LAYOUT_CLASSES",
    "LAYOUT_SPLITS",
    "MANIFEST_NAME",
    "SPLITS",
    "SPLIT_PROPORTIONS",
    "Budget",
    "DatasetRejected",
    "ExtractionResult",
    "Limits",
    "check_image_file",
    "copy_limited",
    "describe_image_error",
    "min_classes_for_split",
    "safe_extract",
    "split_classes",
]

_CHUNK = 64 * 1024
# What reading a damaged member raises (writing errors, e.g. a full disk, are not among them:
# those are the server's problem, not the upload's).
_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    RuntimeError,
    ValueError,
    NotImplementedError,
)


@dataclass
class ExtractionResult:
    """What was extracted to `root`: the layout found, images per class per split, the class
    split (recorded when it was made by the seeded shuffle), and what the check returned."""

    root: Path
    layout: str
    classes: dict[str, dict[str, int]]
    class_split: dict[str, Any]
    images: int
    uncompressed_bytes: int
    skipped: list[str] = field(default_factory=list)
    check_result: Any = None


def safe_extract(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    limits: Limits | None = None,
    *,
    split_seed: int = 0,
    check: Callable[[Path, ExtractionResult], Any] | None = None,
) -> ExtractionResult:
    """Extract `archive` (a zip) into the new folder `dest` as DEST/{train,val,test}/CLASS/IMAGE,
    or raise DatasetRejected and leave nothing behind.

    `dest` must not exist; its parent is created if needed and holds the temporary folder while
    extracting. `check(tmp_root, result)`, if given, runs on the complete temporary folder
    before it is moved into place (raise DatasetRejected to refuse it); its return value is
    kept in `result.check_result`. A `dataset.json` manifest (layout, class split, counts) is
    written at the top of the folder.
    """
    limits = limits or Limits()
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"destination {dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    committed = False
    try:
        with open(archive, "rb") as fp:
            archive_bytes = os.fstat(fp.fileno()).st_size
            precheck(fp, archive_bytes, limits)
            zf = open_zip(fp)
            with zf:
                members, layout, class_split, skipped = plan_archive(
                    zf, limits, split_seed, archive_bytes=archive_bytes
                )
                counts, total = _extract_all(zf, members, tmp, archive_bytes, limits)
        result = ExtractionResult(
            root=dest,
            layout=layout,
            classes=counts,
            class_split=class_split,
            images=len(members),
            uncompressed_bytes=total,
            skipped=skipped,
        )
        _write_manifest(tmp, result)
        if check is not None:
            result.check_result = check(tmp, result)
        os.replace(tmp, dest)
        committed = True
        return result
    finally:
        if not committed:
            shutil.rmtree(tmp, ignore_errors=True)


def copy_limited(
    src: IO[bytes],
    dst: IO[bytes],
    *,
    member: str,
    compressed_bytes: int,
    budget: Budget,
) -> int:
    """Copy `src` to `dst` counting the bytes really produced; DatasetRejected as soon as the
    member or the running total passes a limit. Returns the member's size."""
    reader = _CountingReader(src, member, compressed_bytes, budget)
    while chunk := reader.read(_CHUNK):
        dst.write(chunk)
    return reader.count


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------
@dataclass
class Budget:
    """Bytes really produced so far, against the archive-wide limits."""

    limits: Limits
    archive_bytes: int
    total: int = 0


class _CountingReader:
    """Reads a member's decompressed stream and aborts as soon as the bytes actually produced
    pass a limit: the header sizes are never trusted alone."""

    def __init__(self, src: IO[bytes], member: str, compressed: int, budget: Budget) -> None:
        self.src = src
        self.member = member
        self.compressed = max(compressed, 1)
        self.budget = budget
        self.count = 0

    def read(self, n: int) -> bytes:
        try:
            data = self.src.read(n)
        except _READ_ERRORS as err:  # a bad CRC, a broken deflate stream, a lying header
            raise _corrupt(self.member, err) from err
        self.count += len(data)
        self.budget.total += len(data)
        limits = self.budget.limits
        if self.count > limits.max_file_bytes:
            raise DatasetRejected(
                "file_too_large",
                f"'{self.member}' expands past the per-file limit of "
                f"{format_size(limits.max_file_bytes)}.",
                self.member,
            )
        if self.count > limits.ratio_min_bytes and self.count > limits.max_ratio * self.compressed:
            raise DatasetRejected(
                "compression_ratio",
                f"'{self.member}' expands past {limits.max_ratio:,.0f} times its compressed size "
                f"of {format_size(self.compressed)}: refused as a likely zip bomb.",
                self.member,
            )
        if self.budget.total > limits.max_total_bytes:
            raise DatasetRejected(
                "total_too_large",
                f"The archive expands past the total limit of {format_size(limits.max_total_bytes)} "
                f"(reached at '{self.member}').",
                self.member,
            )
        check_total_ratio(self.budget.total, self.budget.archive_bytes, limits, "expands to")
        return data


def _extract_all(
    zf: zipfile.ZipFile, members: list[Member], root: Path, archive_bytes: int, limits: Limits
) -> tuple[dict[str, dict[str, int]], int]:
    budget = Budget(limits, archive_bytes)
    counts: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    real_root = root.resolve()
    for member in members:
        folder = root / member.split / member.cls
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / member.filename
        if not target.resolve().is_relative_to(real_root):  # belt and braces: names are checked
            raise DatasetRejected(
                "path_traversal", f"'{member.info.filename}' would be written outside the folder."
            )
        _write_member(zf, member.info, target, budget)
        check_image_file(target, member.info.filename, limits.max_image_pixels)
        by_class = counts[member.split]
        by_class[member.cls] = by_class.get(member.cls, 0) + 1
    return counts, budget.total


def _write_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: Budget) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(target, flags, 0o644)
    with os.fdopen(fd, "wb") as out:
        try:
            src = zf.open(info)
        except _READ_ERRORS as err:
            raise _corrupt(info.filename, err) from err
        with src:
            copy_limited(
                src, out, member=info.filename, compressed_bytes=info.compress_size, budget=budget
            )


def _corrupt(member: str, err: BaseException) -> DatasetRejected:
    return DatasetRejected("corrupt", f"'{member}' is damaged and cannot be read ({err}).", member)


def check_image_file(path: Path, member: str, max_pixels: int) -> None:
    """Open with Pillow (PNG and JPEG decoders only), check the pixel count, `verify()`."""
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise DatasetRejected(
                    "image_too_large",
                    f"'{member}' is {width} x {height} pixels; the limit is {max_pixels:,} "
                    "pixels per image.",
                    member,
                )
            img.verify()
    except DatasetRejected:
        raise
    except Image.DecompressionBombError as err:
        raise DatasetRejected(
            "image_too_large", f"'{member}' is too large an image ({err}).", member
        ) from err
    except Exception as err:  # Pillow raises many kinds (UnidentifiedImageError, SyntaxError, ...)
        raise DatasetRejected(
            "not_image",
            f"'{member}' is not a valid PNG or JPEG image ({describe_image_error(err, path, member)}).",
            member,
        ) from err


def describe_image_error(err: Exception, path: Path, member: str) -> str:
    """Pillow's complaint in words for the user, without the server's file paths."""
    if isinstance(err, UnidentifiedImageError):
        return "its content is neither PNG nor JPEG"
    return str(err).replace(str(path), member) or type(err).__name__


def _write_manifest(root: Path, result: ExtractionResult) -> None:
    manifest = {
        "layout": result.layout,
        "class_split": result.class_split,
        "images_per_class": result.classes,
        "images": result.images,
        "uncompressed_bytes": result.uncompressed_bytes,
    }
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True))
