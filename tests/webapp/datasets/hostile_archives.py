"""A generator of hostile (and good) zip archives for the dataset upload tests.

Each builder takes a folder and returns the path of a new zip in it. A hostile archive is a
small valid dataset plus exactly one thing wrong, so each rejection can only come from the
check under test. `CASES` lists them with the rejection code and a fragment of the message the
user must see. Images are tiny (8 x 8 pixels) and made with Pillow, so the whole corpus builds
in well under a second.

Some archives are crafted by patching the bytes `zipfile` writes (an encrypted flag, a declared
size, a compression method, a second directory entry pointing at the same data): `zipfile`
cannot write those lies itself, and an attacker's tool can.
"""

from __future__ import annotations

import io
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from webapp.datasets.extraction import Limits

IMAGE_SIZE = 8
SPLITS = ("train", "val", "test")
# Limits for the corpus: the defaults, but few enough files that "many files" stays small.
TEST_LIMITS = Limits(max_files=200)

Entry = tuple[str | zipfile.ZipInfo, bytes]


# ------------------------------------------------------------------------------------------
# Images and zips
# ------------------------------------------------------------------------------------------
def png_bytes(seed: int = 0, size: int = IMAGE_SIZE, **save_options) -> bytes:
    """A small RGB PNG whose colour depends on `seed` (so classes differ)."""
    colour = (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "PNG", **save_options)
    return buffer.getvalue()


def jpeg_bytes(seed: int = 0, size: int = IMAGE_SIZE) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((size, size), 40 + seed % 50).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


def gif_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (IMAGE_SIZE, IMAGE_SIZE)).save(buffer, "GIF")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels in a few dozen bytes (a pixel bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def tree(folder: Path) -> list[str]:
    """Every path under `folder` (hidden ones included), relative and sorted: compared before
    and after an extraction to prove nothing was written outside the destination."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def write_zip(path: Path, entries: list[Entry], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """Write `entries` (name or ZipInfo, bytes) as a zip, duplicates included."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": on purpose in one case
        with zipfile.ZipFile(path, "w", compression) as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return path


def split_entries(
    classes_per_split: int = 5, images_per_class: int = 5, prefix: str = ""
) -> list[Entry]:
    """A valid train/val/test dataset: 5 classes of 5 images per split by default."""
    entries: list[Entry] = []
    for s, split in enumerate(SPLITS):
        for c in range(classes_per_split):
            for i in range(images_per_class):
                image = png_bytes(s * 100 + c) if i % 2 == 0 else jpeg_bytes(s * 100 + c)
                ext = "png" if i % 2 == 0 else "jpg"
                entries.append((f"{prefix}{split}/{split}-c{c}/img{i}.{ext}", image))
    return entries


def flat_entries(classes: int = 32, images_per_class: int = 5, prefix: str = "") -> list[Entry]:
    """Plain class folders (no train/val/test), to be split 64/16/20."""
    return [
        (f"{prefix}class{c:02d}/img{i}.png", png_bytes(c))
        for c in range(classes)
        for i in range(images_per_class)
    ]


# ------------------------------------------------------------------------------------------
# Good archives
# ------------------------------------------------------------------------------------------
def good_split_archive(folder: Path) -> Path:
    """train/, val/, test/ with 5 classes of 5 images each: the smallest valid dataset."""
    return write_zip(folder / "good-split.zip", split_entries())


def good_flat_archive(folder: Path, classes: int = 32) -> Path:
    """32 plain class folders: split 64/16/20 gives 20/5/7 classes."""
    return write_zip(folder / "good-flat.zip", flat_entries(classes))


def good_wrapped_archive(folder: Path) -> Path:
    """What Finder's "Compress" makes of a folder: everything under one wrapper folder, with
    __MACOSX/ resource forks, .DS_Store files and folder entries, all to be skipped."""
    entries: list[Entry] = [("mydata/", b""), ("mydata/train/", b"")]
    entries += split_entries(prefix="mydata/")
    entries += [
        ("mydata/.DS_Store", b"\x00\x00\x00\x01Bud1"),
        ("mydata/train/.DS_Store", b"\x00\x00\x00\x01Bud1"),
        ("__MACOSX/mydata/train/train-c0/._img0.png", b"\x00\x05\x16\x07 resource fork"),
        ("mydata/val/val-c0/Thumbs.db", b"thumbs"),
    ]
    return write_zip(folder / "good-wrapped.zip", entries)


# ------------------------------------------------------------------------------------------
# Byte patching: what zipfile will not write
# ------------------------------------------------------------------------------------------
def _central_entries(data: bytes) -> list[tuple[int, str, int]]:
    """(offset of the central entry, name, offset of its local header) for each entry."""
    eocd = data.rfind(b"PK\x05\x06")
    count, _, cd_offset = struct.unpack("<HII", data[eocd + 10 : eocd + 20])
    result, pos = [], cd_offset
    for _ in range(count):
        assert data[pos : pos + 4] == b"PK\x01\x02"
        n, m, k = struct.unpack("<HHH", data[pos + 28 : pos + 34])
        name = data[pos + 46 : pos + 46 + n].decode("utf-8")
        result.append((pos, name, struct.unpack("<I", data[pos + 42 : pos + 46])[0]))
        pos += 46 + n + m + k
    return result


def patch_zip(
    path: Path,
    member: str,
    *,
    add_flags: int = 0,
    file_size: int | None = None,
    method: int | None = None,
    crc: int | None = None,
) -> Path:
    """Rewrite one member's fields in both its central-directory entry and its local header."""
    data = bytearray(path.read_bytes())
    for central, name, local in _central_entries(bytes(data)):
        if name != member:
            continue
        if add_flags:
            for at in (central + 8, local + 6):
                struct.pack_into("<H", data, at, struct.unpack_from("<H", data, at)[0] | add_flags)
        if file_size is not None:
            struct.pack_into("<I", data, central + 24, file_size)
            struct.pack_into("<I", data, local + 22, file_size)
        if method is not None:
            struct.pack_into("<H", data, central + 10, method)
            struct.pack_into("<H", data, local + 8, method)
        if crc is not None:
            struct.pack_into("<I", data, central + 16, crc)
            struct.pack_into("<I", data, local + 14, crc)
    path.write_bytes(bytes(data))
    return path


def add_alias_entry(path: Path, member: str, alias: str) -> Path:
    """Append a second central-directory entry named `alias` that points at `member`'s data:
    the overlapping-entries trick (one compressed block, many files)."""
    data = path.read_bytes()
    eocd = data.rfind(b"PK\x05\x06")
    count, cd_size, cd_offset = struct.unpack("<HII", data[eocd + 10 : eocd + 20])
    for central, name, _ in _central_entries(data):
        if name == member:
            n, m, k = struct.unpack("<HHH", data[central + 28 : central + 34])
            fixed = bytearray(data[central : central + 46])
            struct.pack_into("<H", fixed, 28, len(alias.encode()))
            copy = bytes(fixed) + alias.encode() + data[central + 46 + n : central + 46 + n + m + k]
            break
    else:
        raise KeyError(member)
    directory = data[cd_offset : cd_offset + cd_size] + copy
    end = bytearray(data[eocd : eocd + 22])
    struct.pack_into("<HHII", end, 8, count + 1, count + 1, len(directory), cd_offset)
    path.write_bytes(data[:cd_offset] + directory + bytes(end))
    return path


def _special(name: str, kind: int, data: bytes) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix: the mode bits in external_attr mean what they say
    info.external_attr = (kind | 0o777) << 16
    return info, data


# ------------------------------------------------------------------------------------------
# Hostile archives
# ------------------------------------------------------------------------------------------
def zip_bomb(folder: Path) -> Path:
    """One 5 MiB member of zeros that deflates to ~5 KiB (ratio ~1000:1)."""
    entries = split_entries() + [("train/train-c0/bomb.png", bytes(5 * 1024 * 1024))]
    return write_zip(folder / "zip-bomb.zip", entries)


def spread_zip_bomb(folder: Path) -> Path:
    """Twenty valid but uncompressed 900 KB PNGs of black: each below the per-member ratio
    threshold (1 MiB), together 17 MiB from ~40 KiB."""
    blank = png_bytes(0, size=540, compress_level=0)
    entries = split_entries() + [(f"train/train-c0/pad{i:02d}.png", blank) for i in range(20)]
    return write_zip(folder / "spread-bomb.zip", entries)


def many_files(folder: Path, count: int = 250) -> Path:
    """More entries than TEST_LIMITS.max_files (200)."""
    entries = split_entries() + [(f"train/train-c0/x{i}.png", b"") for i in range(count)]
    return write_zip(folder / "many-files.zip", entries, zipfile.ZIP_STORED)


def path_traversal(folder: Path) -> Path:
    return write_zip(folder / "traversal.zip", split_entries() + [("../evil.png", png_bytes())])


def deep_traversal(folder: Path) -> Path:
    entries = split_entries() + [("train/train-c0/../../../evil.png", png_bytes())]
    return write_zip(folder / "deep-traversal.zip", entries)


def absolute_path(folder: Path, target: str = "/tmp/evil.png") -> Path:
    return write_zip(folder / "absolute.zip", split_entries() + [(target, png_bytes())])


def drive_letter(folder: Path) -> Path:
    return write_zip(folder / "drive.zip", split_entries() + [("C:\\evil.png", png_bytes())])


def backslash_names(folder: Path) -> Path:
    entries = split_entries() + [("train\\train-c0\\img9.png", png_bytes())]
    return write_zip(folder / "backslash.zip", entries)


def control_character(folder: Path) -> Path:
    entries = split_entries() + [("train/train-c0/a\x07b.png", png_bytes())]
    return write_zip(folder / "control.zip", entries)


def long_name(folder: Path) -> Path:
    entries = split_entries() + [(f"train/train-c0/{'a' * 300}.png", png_bytes())]
    return write_zip(folder / "long-name.zip", entries)


def symlink_member(folder: Path) -> Path:
    """A member whose mode says symbolic link, pointing at /etc/passwd."""
    link = _special("train/train-c0/link.png", stat.S_IFLNK, b"/etc/passwd")
    return write_zip(folder / "symlink.zip", split_entries() + [link])


def fifo_member(folder: Path) -> Path:
    fifo = _special("train/train-c0/pipe.png", stat.S_IFIFO, b"")
    return write_zip(folder / "fifo.zip", split_entries() + [fifo])


def text_as_png(folder: Path) -> Path:
    """A .png that is really text."""
    entries = split_entries() + [("train/train-c0/fake.png", b"this is text, not a PNG\n" * 4)]
    return write_zip(folder / "text-as-png.zip", entries)


def gif_as_png(folder: Path) -> Path:
    """A real image, but a GIF: only PNG and JPEG decoders are allowed."""
    return write_zip(
        folder / "gif.zip", split_entries() + [("train/train-c0/anim.png", gif_bytes())]
    )


def text_file(folder: Path) -> Path:
    entries = split_entries() + [("train/train-c0/notes.txt", b"my notes")]
    return write_zip(folder / "text-file.zip", entries)


def pixel_bomb(folder: Path) -> Path:
    """A 100-byte PNG declaring 5000 x 5000 pixels (25 million, over the 16.7 million limit)."""
    entries = split_entries() + [("train/train-c0/huge.png", png_header_only(5000, 5000))]
    return write_zip(folder / "pixel-bomb.zip", entries)


def truncated_jpeg(folder: Path) -> Path:
    """A JPEG cut short: Pillow's verify() accepts it, decoding it fails."""
    whole = jpeg_bytes(3, size=32)
    entries = split_entries() + [("val/val-c1/cut.jpg", whole[:-40])]
    return write_zip(folder / "truncated.zip", entries)


def encrypted_member(folder: Path) -> Path:
    path = write_zip(folder / "encrypted.zip", split_entries())
    return patch_zip(path, "train/train-c0/img0.png", add_flags=0x1)


def unknown_compression(folder: Path) -> Path:
    path = write_zip(folder / "method.zip", split_entries())
    return patch_zip(path, "train/train-c0/img0.png", method=99)


def bad_crc(folder: Path) -> Path:
    path = write_zip(folder / "bad-crc.zip", split_entries())
    return patch_zip(path, "train/train-c0/img1.jpg", crc=0x12345678)


def huge_declared_size(folder: Path) -> Path:
    """A member whose headers claim 3 GB."""
    path = write_zip(folder / "huge-declared.zip", split_entries())
    return patch_zip(path, "train/train-c0/img0.png", file_size=3_000_000_000)


def understated_size(folder: Path) -> Path:
    """Headers claim 100 bytes for a member that inflates to 2 MiB: the data must not be
    trusted past what was declared."""
    entries = split_entries() + [("train/train-c0/liar.png", bytes(2 * 1024 * 1024))]
    path = write_zip(folder / "understated.zip", entries)
    return patch_zip(path, "train/train-c0/liar.png", file_size=100)


def zip64_entry_count(folder: Path) -> Path:
    """A zip64 end record declaring a million entries: refused before `zipfile` would parse a
    directory that large into memory."""
    path = write_zip(folder / "zip64-count.zip", split_entries())
    data = path.read_bytes()
    eocd = data.rfind(b"PK\x05\x06")
    _, cd_size, cd_offset = struct.unpack("<HII", data[eocd + 10 : eocd + 20])
    record = struct.pack(
        "<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, 1_000_000, 1_000_000, cd_size, cd_offset
    )
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, eocd, 1)
    end = bytearray(data[eocd : eocd + 22])
    struct.pack_into("<HH", end, 8, 0xFFFF, 0xFFFF)
    path.write_bytes(data[:eocd] + record + locator + bytes(end))
    return path


def overlapping_entries(folder: Path) -> Path:
    path = write_zip(folder / "overlap.zip", split_entries())
    return add_alias_entry(path, "train/train-c0/img0.png", "train/train-c0/alias.png")


def duplicate_names(folder: Path) -> Path:
    entries = split_entries() + [("train/train-c0/img0.png", png_bytes(9))]
    return write_zip(folder / "duplicate.zip", entries)


def case_duplicate_names(folder: Path) -> Path:
    entries = split_entries() + [("train/train-c0/IMG0.PNG", png_bytes(9))]
    return write_zip(folder / "case-duplicate.zip", entries)


def nested_zip(folder: Path) -> Path:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("train/c/img.png", png_bytes())
    entries = split_entries() + [("train/train-c0/more.zip", inner.getvalue())]
    return write_zip(folder / "nested.zip", entries)


def empty_zip(folder: Path) -> Path:
    return write_zip(folder / "empty.zip", [])


def only_folders(folder: Path) -> Path:
    entries: list[Entry] = [("train/", b""), ("val/", b""), ("test/", b"")]
    return write_zip(folder / "only-folders.zip", entries)


def not_a_zip(folder: Path) -> Path:
    path = folder / "not-a-zip.zip"
    path.write_bytes(b"I am a text file with a .zip name.\n" * 10)
    return path


def truncated_zip(folder: Path) -> Path:
    """A zip cut in half (an interrupted download): no end-of-directory record."""
    whole = write_zip(folder / "whole.zip", split_entries())
    data = whole.read_bytes()
    path = folder / "truncated-zip.zip"
    path.write_bytes(data[: len(data) // 2])
    return path


def too_few_classes(folder: Path) -> Path:
    return write_zip(folder / "few-classes.zip", split_entries(classes_per_split=3))


def too_few_classes_flat(folder: Path) -> Path:
    """20 plain class folders: 64/16/20 gives val only 3 classes."""
    return write_zip(folder / "few-classes-flat.zip", flat_entries(classes=20))


def too_few_images(folder: Path) -> Path:
    """Class val-c3 keeps only 2 of its 5 images."""
    keep = ("val/val-c3/img0.png", "val/val-c3/img1.jpg")
    entries = [
        (n, d) for n, d in split_entries() if not str(n).startswith("val/val-c3/") or n in keep
    ]
    return write_zip(folder / "few-images.zip", entries)


def missing_split(folder: Path) -> Path:
    entries = [(n, d) for n, d in split_entries() if not str(n).startswith("val/")]
    return write_zip(folder / "missing-split.zip", entries)


def mixed_layout(folder: Path) -> Path:
    entries = split_entries() + [("extra-class/img0.png", png_bytes())]
    return write_zip(folder / "mixed.zip", entries)


def image_outside_class(folder: Path) -> Path:
    return write_zip(folder / "loose.zip", split_entries() + [("train/loose.png", png_bytes())])


def too_deep(folder: Path) -> Path:
    entries = split_entries() + [("train/train-c0/sub/deep.png", png_bytes())]
    return write_zip(folder / "deep.zip", entries)


def deep_nesting(folder: Path) -> Path:
    """An image 40 folders down: the wrapper-stripping must not walk arbitrarily deep paths."""
    entries = split_entries() + [("d/" * 40 + "img.png", png_bytes())]
    return write_zip(folder / "deep-nesting.zip", entries)


@dataclass(frozen=True)
class Case:
    build: Callable[[Path], Path]
    code: str
    message: str  # a fragment the user-facing message must contain


CASES: dict[str, Case] = {
    "zip bomb": Case(zip_bomb, "compression_ratio", "likely zip bomb"),
    "spread zip bomb": Case(spread_zip_bomb, "compression_ratio", "likely zip bomb"),
    "many files": Case(many_files, "too_many_files", "the limit is 200"),
    "zip64 entry count": Case(zip64_entry_count, "too_many_files", "1,000,000 entries"),
    "path traversal": Case(path_traversal, "path_traversal", "'../evil.png'"),
    "deep traversal": Case(deep_traversal, "path_traversal", "outside the archive"),
    "absolute path": Case(absolute_path, "absolute_path", "'/tmp/evil.png' is an absolute path"),
    "drive letter": Case(drive_letter, "drive_letter", "drive letter"),
    "backslash": Case(backslash_names, "backslash", "backslash"),
    "control character": Case(control_character, "bad_name", "control character"),
    "long name": Case(long_name, "bad_name", "longer than 255 bytes"),
    "symlink": Case(symlink_member, "symlink", "'train/train-c0/link.png' is a symbolic link"),
    "fifo": Case(fifo_member, "special_file", "special file"),
    "text as png": Case(text_as_png, "not_image", "'train/train-c0/fake.png' is not a valid"),
    "gif as png": Case(gif_as_png, "not_image", "not a valid PNG or JPEG"),
    "text file": Case(text_file, "not_image", "'train/train-c0/notes.txt' is not an image"),
    "pixel bomb": Case(pixel_bomb, "image_too_large", "5000 x 5000 pixels"),
    "truncated jpeg": Case(truncated_jpeg, "undecodable", "'val/val-c1/cut.jpg' cannot be decoded"),
    "encrypted": Case(encrypted_member, "encrypted", "'train/train-c0/img0.png' is encrypted"),
    "unknown compression": Case(unknown_compression, "compression", "compression method 99"),
    "bad crc": Case(bad_crc, "corrupt", "'train/train-c0/img1.jpg' is damaged"),
    "huge declared size": Case(huge_declared_size, "file_too_large", "declares 2.8 GiB"),
    "understated size": Case(understated_size, "corrupt", "'train/train-c0/liar.png' is damaged"),
    "overlapping entries": Case(overlapping_entries, "overlapping", "shares its data"),
    "duplicate names": Case(duplicate_names, "duplicate", "appears twice"),
    "case duplicate": Case(case_duplicate_names, "duplicate", "ignoring case"),
    "nested zip": Case(nested_zip, "nested_archive", "nested archives are not extracted"),
    "empty zip": Case(empty_zip, "empty", "The archive is empty"),
    "only folders": Case(only_folders, "no_images", "has no images"),
    "not a zip": Case(not_a_zip, "not_zip", "not a zip archive"),
    "truncated zip": Case(truncated_zip, "not_zip", "not a zip archive"),
    "too few classes": Case(too_few_classes, "too_few_classes", "The train/ folder has 3 classes"),
    "too few classes (flat)": Case(too_few_classes_flat, "too_few_classes", "at least 29 classes"),
    "too few images": Case(too_few_images, "too_few_images", "Class 'val-c3' in val/ has 2 images"),
    "missing split": Case(missing_split, "missing_split", "no val/ folder"),
    "mixed layout": Case(mixed_layout, "mixed_layout", "mixes split folders"),
    "image outside class": Case(image_outside_class, "wrong_depth", "not inside a class folder"),
    "too deep": Case(too_deep, "wrong_depth", "nested too deeply"),
    "deep nesting": Case(deep_nesting, "wrong_depth", "(41 levels; the limit is 16)"),
}
