"""What a dataset zip may contain, decided from its directory before anything is written.

Pure Python, no Django (see `extraction` for the whole procedure and why). Checks, in order:

1. Before `zipfile` parses the central directory into memory (`precheck`): the archive's size,
   and the entry count and directory size its end record declares.
2. Each entry (`plan_archive`): its name (no `..`, absolute path, drive letter, backslash,
   control character, or name over 255 bytes), its type (no symbolic link or other special
   file), no encryption, a known compression method, no duplicate name (ignoring case), no
   entries sharing their data (overlapping entries, a zip-bomb trick), and the *declared* sizes:
   per file, in total, and compression ratios.
3. The layout: ``train/CLASS/IMAGE``, ``val/...``, ``test/...``, or plain ``CLASS/IMAGE``
   folders split 64/16/20 by a seeded shuffle (`split_classes`), optionally inside wrapper
   folders. Only .png/.jpg/.jpeg files; nested archives and other files are refused; desktop
   litter (``__MACOSX/``, hidden files, ``Thumbs.db``, ``desktop.ini``) is skipped.

Every refusal is a `DatasetRejected` whose message names what is wrong, which member, which
limit.
"""

from __future__ import annotations

import random
import re
import stat
import struct
import unicodedata
import zipfile
from dataclasses import dataclass
from typing import IO, Any

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

SPLITS = ("train", "val", "test")
# Mini-ImageNet's 64/16/20 classes, for archives of plain class folders.
SPLIT_PROPORTIONS = {"train": 0.64, "val": 0.16, "test": 0.20}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
IMAGE_FORMATS = ("PNG", "JPEG")
ARCHIVE_EXTENSIONS = (
    ".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".lz", ".lzma", ".cab",
)  # fmt: skip
JUNK_DIRS = {"__macosx"}
JUNK_FILES = {"thumbs.db", "desktop.ini"}
SUPPORTED_COMPRESSION = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
MANIFEST_NAME = "dataset.json"
LAYOUT_SPLITS = "splits"
LAYOUT_CLASSES = "classes"
EXPECTED_LAYOUT = (
    "a zip of train/CLASS/IMAGE, val/CLASS/IMAGE and test/CLASS/IMAGE, "
    "or of plain CLASS/IMAGE folders (PNG or JPEG images)"
)

_ZIP_FLAG_ENCRYPTED = 0x1
_ZIP_FLAG_STRONG_ENCRYPTION = 0x40
_LOCAL_HEADER_BYTES = 30
# A generous average size of one central-directory entry (46 bytes, the name, extra fields):
# bounds the memory `zipfile` spends on the directory before we can count its entries.
_CENTRAL_BYTES_PER_FILE = 400
_DRIVE = re.compile(r"^[A-Za-z]:")


class DatasetRejected(ValueError):
    """The upload cannot become a dataset. `message` is for the user: what is wrong, which
    member, which limit. `code` is a stable keyword for tests and logs; `member` the zip entry."""

    def __init__(self, code: str, message: str, member: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.member = member


@dataclass(frozen=True)
class Limits:
    """What an archive may hold. The defaults suit Mini-ImageNet-sized uploads (60,000 small
    images, ~200 MB) while a worker stays within a few hundred MB of memory and 1 GiB of disk
    per dataset. See the app's settings (DATASET_*) for the production values."""

    max_archive_bytes: int = 200 * MIB
    max_total_bytes: int = 1 * GIB
    max_file_bytes: int = 20 * MIB
    max_files: int = 100_000
    # Images barely compress in a zip (about 1:1); 100:1 is only reached by padding or a bomb.
    # Applied to a member, and to the whole archive, once past `ratio_min_bytes` (a tiny
    # blank image may legitimately compress 100:1, but it cannot fill a disk).
    max_ratio: float = 100.0
    ratio_min_bytes: int = 1 * MIB
    max_image_pixels: int = 4096 * 4096
    max_name_bytes: int = 255
    # Folders within folders: a dataset needs 3 levels, plus a wrapper folder or two.
    max_depth: int = 16


@dataclass(frozen=True)
class Member:
    info: zipfile.ZipInfo
    split: str
    cls: str
    filename: str


def split_classes(names: list[str], seed: int) -> dict[str, list[str]]:
    """Split class names 64/16/20 into train/val/test: sorted, shuffled with `seed`, then cut.

    Deterministic for a given set of names and seed, whatever order the zip listed them in.
    """
    order = sorted(names)
    random.Random(seed).shuffle(order)
    n = len(order)
    n_train = int(n * SPLIT_PROPORTIONS["train"] + 0.5)
    n_val = int(n * SPLIT_PROPORTIONS["val"] + 0.5)
    return {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


def min_classes_for_split(min_per_split: int) -> int:
    """The fewest plain class folders whose 64/16/20 split gives every split `min_per_split`."""
    n = min_per_split
    while True:
        parts = split_classes([str(i) for i in range(n)], 0)
        if all(len(parts[s]) >= min_per_split for s in SPLITS):
            return n
        n += 1


def plan_archive(
    zf: zipfile.ZipFile, limits: Limits, split_seed: int = 0, *, archive_bytes: int | None = None
) -> tuple[list[Member], str, dict[str, Any], list[str]]:
    """Check every entry from the central directory and decide where each image goes, before
    anything is written. Returns (members, layout, class_split, skipped names).

    `archive_bytes` (the zip's size) enables the whole-archive compression-ratio check."""
    infos = zf.infolist()
    if not infos:
        raise DatasetRejected("empty", "The archive is empty: it contains no files at all.")
    if len(infos) > limits.max_files:
        raise DatasetRejected(
            "too_many_files",
            f"The archive has {len(infos):,} entries; the limit is {limits.max_files:,}.",
        )
    _check_overlaps(infos)
    seen: dict[str, str] = {}
    declared_total = 0
    files: list[tuple[zipfile.ZipInfo, list[str]]] = []
    skipped: list[str] = []
    for info in infos:
        parts = entry_parts(info, limits)
        _check_entry_type(info)
        key = unicodedata.normalize("NFC", "/".join(parts)).casefold()
        if key in seen:
            same = seen[key] == info.filename
            raise DatasetRejected(
                "duplicate",
                f"'{info.filename}' appears twice in the archive"
                + ("" if same else f" (as '{seen[key]}'; names are compared ignoring case)")
                + ": every file needs its own name.",
                info.filename,
            )
        seen[key] = info.filename
        if info.is_dir() or not parts:
            continue
        declared_total += info.file_size
        _check_declaredformat_size(info, declared_total, limits)
        if _is_junk(parts):
            skipped.append(info.filename)
            continue
        _check_file_kind(info, parts)
        files.append((info, parts))
    if archive_bytes is not None:
        check_total_ratio(declared_total, archive_bytes, limits, "declares")
    if not files:
        raise DatasetRejected(
            "no_images",
            "The archive has no images, only folders"
            + (f" and skipped files such as '{skipped[0]}'" if skipped else "")
            + f". Expected {EXPECTED_LAYOUT}.",
        )
    members, layout, class_split = _place(files, split_seed)
    return members, layout, class_split, skipped


def entry_parts(info: zipfile.ZipInfo, limits: Limits) -> list[str]:
    """The entry's path components, or DatasetRejected if its name could escape the folder or
    cannot be a file name. `.` components are dropped; a trailing `/` marks a folder."""
    name = info.orig_filename
    member = info.filename
    if "\x00" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise DatasetRejected(
            "bad_name",
            f"'{_printable(name)}' contains a control character; file names must be plain text.",
            member,
        )
    if name.startswith(("/", "\\")):
        raise DatasetRejected(
            "absolute_path",
            f"'{name}' is an absolute path; every file must be inside the archive's own folders.",
            member,
        )
    if _DRIVE.match(name):
        raise DatasetRejected(
            "drive_letter",
            f"'{name}' starts with a drive letter; every file must be inside the archive's own "
            "folders.",
            member,
        )
    if "\\" in name:
        raise DatasetRejected(
            "backslash",
            f"'{name}' contains a backslash; zip names separate folders with '/'. Re-create the "
            "zip with a standard tool (e.g. 'Compress' in Finder or Explorer, or `zip -r`).",
            member,
        )
    if ":" in name:
        raise DatasetRejected(
            "bad_name", f"'{name}' contains ':', which is not allowed in file names.", member
        )
    parts = [p for p in name.rstrip("/").split("/") if p != "."]
    if len(parts) > limits.max_depth:
        raise DatasetRejected(
            "wrong_depth",
            f"'{name[:200]}' is nested too deeply ({len(parts)} levels; the limit is "
            f"{limits.max_depth}).",
            member,
        )
    for part in parts:
        if part == "..":
            raise DatasetRejected(
                "path_traversal",
                f"'{name}' points outside the archive's folder ('..'); refused.",
                member,
            )
        if part == "":
            raise DatasetRejected("bad_name", f"'{name}' has an empty folder name ('//').", member)
        if len(part.encode("utf-8")) > limits.max_name_bytes:
            raise DatasetRejected(
                "bad_name",
                f"'{name}' has a name longer than {limits.max_name_bytes} bytes.",
                member,
            )
    return parts


# ------------------------------------------------------------------------------------------
# Before zipfile: the end-of-central-directory record
# ------------------------------------------------------------------------------------------
def precheck(fp: IO[bytes], archive_bytes: int, limits: Limits) -> None:
    """Refuse an archive too big, not a zip, or declaring too many entries, before `zipfile`
    reads its whole central directory into memory."""
    if archive_bytes > limits.max_archive_bytes:
        raise DatasetRejected(
            "archive_too_large",
            f"The archive is {format_size(archive_bytes)}; the limit is {format_size(limits.max_archive_bytes)}.",
        )
    tail_len = min(archive_bytes, 22 + 0xFFFF)
    fp.seek(archive_bytes - tail_len)
    tail = fp.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise DatasetRejected(
            "not_zip",
            "The file is not a zip archive, or it was cut short (it has no end-of-archive "
            f"record). Expected {EXPECTED_LAYOUT}.",
        )
    entries = struct.unpack("<H", tail[at + 10 : at + 12])[0]
    cd_size = struct.unpack("<I", tail[at + 12 : at + 16])[0]
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF:
        locator_at = archive_bytes - tail_len + at - 20
        if locator_at >= 0:
            fp.seek(locator_at)
            locator = fp.read(20)
            if locator[:4] == b"PK\x06\x07":
                fp.seek(struct.unpack("<Q", locator[8:16])[0])
                record = fp.read(56)
                if record[:4] == b"PK\x06\x06" and len(record) == 56:
                    entries, cd_size = struct.unpack("<QQ", record[32:48])
    if entries > limits.max_files:
        raise DatasetRejected(
            "too_many_files",
            f"The archive has {entries:,} entries; the limit is {limits.max_files:,}.",
        )
    if cd_size > max(limits.max_files * _CENTRAL_BYTES_PER_FILE, 64 * KIB):
        raise DatasetRejected(
            "too_many_files",
            f"The archive's file list is {format_size(cd_size)}, more than {limits.max_files:,} "
            "files can need.",
        )
    fp.seek(0)


def open_zip(fp: IO[bytes]) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(fp)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, struct.error) as err:
        raise DatasetRejected(
            "not_zip",
            f"The file is not a readable zip archive ({err}). Expected {EXPECTED_LAYOUT}.",
        ) from err


# ------------------------------------------------------------------------------------------
# Per entry, from the central directory
# ------------------------------------------------------------------------------------------
def _check_entry_type(info: zipfile.ZipInfo) -> None:
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise DatasetRejected(
            "symlink",
            f"'{info.filename}' is a symbolic link; links are refused (they can point anywhere "
            "on the server).",
            info.filename,
        )
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise DatasetRejected(
            "special_file",
            f"'{info.filename}' is a special file (device, pipe or socket), not a regular file.",
            info.filename,
        )
    if info.flag_bits & (_ZIP_FLAG_ENCRYPTED | _ZIP_FLAG_STRONG_ENCRYPTION):
        raise DatasetRejected(
            "encrypted",
            f"'{info.filename}' is encrypted (password-protected); upload an unencrypted zip.",
            info.filename,
        )
    if info.compress_type not in SUPPORTED_COMPRESSION:
        raise DatasetRejected(
            "compression",
            f"'{info.filename}' uses compression method {info.compress_type}, which is not "
            f"supported (use {', '.join(SUPPORTED_COMPRESSION.values())}).",
            info.filename,
        )


def _check_declaredformat_size(info: zipfile.ZipInfo, declared_total: int, limits: Limits) -> None:
    if info.file_size > limits.max_file_bytes:
        raise DatasetRejected(
            "file_too_large",
            f"'{info.filename}' declares {format_size(info.file_size)} uncompressed; the per-file "
            f"limit is {format_size(limits.max_file_bytes)}.",
            info.filename,
        )
    if declared_total > limits.max_total_bytes:
        raise DatasetRejected(
            "total_too_large",
            f"The archive declares more than {format_size(limits.max_total_bytes)} uncompressed "
            f"(the limit), reached at '{info.filename}'.",
            info.filename,
        )
    if info.file_size > limits.ratio_min_bytes and info.file_size > limits.max_ratio * max(
        info.compress_size, 1
    ):
        raise DatasetRejected(
            "compression_ratio",
            f"'{info.filename}' would expand from {format_size(info.compress_size)} to "
            f"{format_size(info.file_size)} (ratio {info.file_size / max(info.compress_size, 1):,.0f}:1; "
            f"the limit is {limits.max_ratio:,.0f}:1): refused as a likely zip bomb.",
            info.filename,
        )


def check_total_ratio(total: int, archive_bytes: int, limits: Limits, verb: str) -> None:
    if total > limits.ratio_min_bytes and total > limits.max_ratio * max(archive_bytes, 1):
        raise DatasetRejected(
            "compression_ratio",
            f"The archive {verb} {format_size(total)} uncompressed from {format_size(archive_bytes)} (more "
            f"than the {limits.max_ratio:,.0f}:1 limit): refused as a likely zip bomb.",
        )


def _check_overlaps(infos: list[zipfile.ZipInfo]) -> None:
    """Two entries whose data overlap (many names, one compressed block) are a zip-bomb trick."""
    ordered = sorted(infos, key=lambda i: i.header_offset)
    for before, after in zip(ordered, ordered[1:], strict=False):
        end = before.header_offset + _LOCAL_HEADER_BYTES + before.compress_size
        if after.header_offset < end:
            raise DatasetRejected(
                "overlapping",
                f"'{after.filename}' shares its data with '{before.filename}' (overlapping "
                "entries): refused as a likely zip bomb.",
                after.filename,
            )


def _is_junk(parts: list[str]) -> bool:
    """Folders and files that desktop zip tools add and nobody means as data."""
    return (
        any(p.lower() in JUNK_DIRS or p.startswith(".") for p in parts)
        or parts[-1].lower() in JUNK_FILES
    )


def _check_file_kind(info: zipfile.ZipInfo, parts: list[str]) -> None:
    lower = parts[-1].lower()
    if lower.endswith(ARCHIVE_EXTENSIONS):
        raise DatasetRejected(
            "nested_archive",
            f"'{info.filename}' is an archive inside the archive; nested archives are not "
            "extracted. Unpack it and zip the class folders themselves.",
            info.filename,
        )
    if not lower.endswith(IMAGE_EXTENSIONS):
        raise DatasetRejected(
            "not_image",
            f"'{info.filename}' is not an image: class folders may hold only .png, .jpg and "
            ".jpeg files.",
            info.filename,
        )


# ------------------------------------------------------------------------------------------
# Layout
# ------------------------------------------------------------------------------------------
def _place(
    files: list[tuple[zipfile.ZipInfo, list[str]]], split_seed: int
) -> tuple[list[Member], str, dict[str, Any]]:
    """Where each image goes: (split, class, file name), and the layout it was found in."""
    paths = [parts for _, parts in files]
    # One or more wrapper folders (zip of "mydata/"): strip while every image lies under the
    # same folder, at least two levels below it, and that folder is not a split folder.
    while (
        len({p[0] for p in paths}) == 1 and paths[0][0] not in SPLITS and min(map(len, paths)) >= 3
    ):
        paths = [p[1:] for p in paths]
    tops = {p[0] for p in paths}
    split_tops = tops & set(SPLITS)
    if split_tops and split_tops != tops:
        others = ", ".join(f"{t}/" for t in sorted(tops - split_tops)[:5])
        raise DatasetRejected(
            "mixed_layout",
            f"The archive mixes split folders ({', '.join(f'{s}/' for s in SPLITS if s in split_tops)}) "
            f"with other top-level entries ({others}). Either put every class folder under "
            "train/, val/ and test/, or upload only plain class folders.",
        )
    members: list[Member] = []
    if split_tops:
        missing = [s for s in SPLITS if s not in split_tops]
        if missing:
            raise DatasetRejected(
                "missing_split",
                f"The archive has {' and '.join(f'{s}/' for s in SPLITS if s in split_tops)} but no "
                f"{' or '.join(f'{s}/' for s in missing)} folder: give all of train/, val/ and "
                "test/, or upload plain class folders and let them be split 64/16/20.",
            )
        for (info, _), parts in zip(files, paths, strict=True):
            if len(parts) != 3:
                raise DatasetRejected(
                    "wrong_depth",
                    f"'{info.filename}' is "
                    + ("not inside a class folder" if len(parts) < 3 else "nested too deeply")
                    + f": expected {parts[0]}/CLASS/IMAGE.",
                    info.filename,
                )
            members.append(Member(info, parts[0], parts[1], parts[2]))
        classes = {s: sorted({m.cls for m in members if m.split == s}) for s in SPLITS}
        return members, LAYOUT_SPLITS, {"layout": LAYOUT_SPLITS, **classes}
    for (info, _), parts in zip(files, paths, strict=True):
        if len(parts) != 2:
            raise DatasetRejected(
                "wrong_depth",
                f"'{info.filename}' is "
                + ("not inside a class folder" if len(parts) < 2 else "nested too deeply")
                + ": expected CLASS/IMAGE (or train/CLASS/IMAGE, val/..., test/...).",
                info.filename,
            )
    split = split_classes(sorted({p[0] for p in paths}), split_seed)
    split_of = {cls: s for s, names in split.items() for cls in names}
    for (info, _), parts in zip(files, paths, strict=True):
        members.append(Member(info, split_of[parts[0]], parts[0], parts[1]))
    class_split = {
        "layout": LAYOUT_CLASSES,
        "seed": split_seed,
        "proportions": dict(SPLIT_PROPORTIONS),
        **split,
    }
    return members, LAYOUT_CLASSES, class_split


def _printable(name: str) -> str:
    return name.encode("unicode_escape").decode("ascii")


def format_size(n: float) -> str:
    """Bytes in words: 200 MB style (binary units, as the limits are set)."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # unreachable
