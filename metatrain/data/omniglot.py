"""Omniglot (Lake et al. 2015) from any of its three usual forms, preprocessed as in the paper.

Sources, looked for per split (``images_background``, ``images_evaluation``) in this order:

1. ``<split>.npz`` (arrays ``images`` bool (n, 20, 105, 105), True = background) plus
   ``alphabets.json`` (alphabet folder names and their runs of character indices);
2. the official ``<split>.zip`` (members ``<split>/ALPHABET/characterNN/XXXX_YY.png``), read
   member by member without extracting;
3. the extracted folder ``<split>/ALPHABET/characterNN/XXXX_YY.png``.

Whatever the source, characters come in one canonical order: alphabet folder names sorted
(Python string order, as the paper's ``sorted(os.listdir(...))``), then ``characterNN`` by
number, background split first. The npz archives store alphabets in the official file-id
order, which is *not* sorted (e.g. "Anglo-Saxon_Futhorc" comes 11th), so they are reordered
with ``alphabets.json``. The splits are drawn from the names alone (``split_order``), so they
are identical for every source.

Preprocessing follows the paper's code (``Image.open(f).resize((28, 28))`` on the 1-bit PNGs):
a nearest-neighbour resize (Pillow's only filter for mode "1" images), binary values, 1 =
background. The decoded, resized images are cached per process (uint8, 255 = background).
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import (
    ClassDataset,
    ClassSplits,
    DataError,
    RotatedClassDataset,
    TensorClassDataset,
    resolve_data_dir,
)

SPLITS = ("images_background", "images_evaluation")
ALPHABETS_JSON = "alphabets.json"
DRAWERS = 20
TOTAL_CHARACTERS = 1623
PAPER_TRAIN_CHARACTERS = 1200

EXPECTED_LAYOUT = (
    "a folder holding, for each of images_background and images_evaluation, either "
    "<split>.npz (+ alphabets.json), or the official <split>.zip, or the extracted folder "
    "<split>/ALPHABET/characterNN/XXXX_YY.png (20 drawers YY = 01..20)"
)
_TREE_LAYOUT = "{root}/ALPHABET/characterNN/XXXX_YY.png, 20 PNGs (YY = 01..20) per character"
_NPZ_LAYOUT = (
    "a NumPy archive with 'images' (bool, shape (characters, 20, H, W), True = background) "
    "next to alphabets.json"
)
_JSON_LAYOUT = (
    '{"background": [{"alphabet": NAME, "first_index": I, "count": N}, ...], "evaluation": [...]}'
    " whose runs cover every character of the split"
)
_CHAR_RE = re.compile(r"character(\d+)")
_FILE_RE = re.compile(r"(\d+)_(\d+)\.png", re.IGNORECASE)


@dataclass(frozen=True)
class OmniglotData:
    """All Omniglot characters, decoded and resized, in canonical order.

    ``images``: uint8 tensor (characters, 20, 1, S, S), 255 = background, 0 = ink.
    ``names``: ``"ALPHABET/characterNN"`` per character. The first ``num_background``
    characters are the background split, the rest the evaluation split.
    """

    images: torch.Tensor
    names: tuple[str, ...]
    num_background: int
    sources: tuple[str, ...]

    @property
    def num_characters(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class _Source:
    kind: str  # "npz" | "zip" | "folder"
    path: Path
    split: str


_CACHE: dict[tuple, OmniglotData] = {}
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget every decoded Omniglot (tests; or to free ~25 MB per cached size)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _find_source(root: Path, split: str) -> _Source | None:
    for kind, path in (
        ("npz", root / f"{split}.npz"),
        ("zip", root / f"{split}.zip"),
        ("folder", root / split),
    ):
        if path.is_dir() if kind == "folder" else path.is_file():
            return _Source(kind, path, split)
    return None


def find_sources(data_dir: str | os.PathLike[str] | None = None) -> tuple[_Source, _Source]:
    """Which file or folder each split will be read from (raises DataError if absent)."""
    root = resolve_data_dir(data_dir, "omniglot")
    if not root.is_dir():
        raise DataError("the Omniglot folder does not exist", root, EXPECTED_LAYOUT)
    sources = []
    for split in SPLITS:
        source = _find_source(root, split)
        if source is None:
            raise DataError(
                f"Omniglot '{split}' not found (no {split}.npz, {split}.zip or {split}/)",
                root,
                EXPECTED_LAYOUT,
            )
        if source.kind == "npz" and not (root / ALPHABETS_JSON).is_file():
            raise DataError(
                f"{split}.npz needs {ALPHABETS_JSON}", root / ALPHABETS_JSON, _JSON_LAYOUT
            )
        sources.append(source)
    return sources[0], sources[1]


def omniglot_available(data_dir: str | os.PathLike[str] | None = None) -> bool:
    """Whether Omniglot can be loaded from ``data_dir`` (cheap: looks at names, decodes nothing)."""
    try:
        find_sources(data_dir)
    except DataError:
        return False
    return True


def load_omniglot(
    data_dir: str | os.PathLike[str] | None = None, image_size: int = 28
) -> OmniglotData:
    """Every character of both splits, resized to ``image_size``; decoded once per process."""
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    sources = find_sources(data_dir)
    # absolute, not resolved: a symlinked npz next to another alphabets.json is another source
    key = tuple((s.kind, os.path.abspath(s.path)) for s in sources) + (image_size,)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        parts = [_read_split(source, image_size) for source in sources]
        images = np.concatenate([p[0] for p in parts])  # bool, True = background
        storage = torch.from_numpy(images.astype(np.uint8) * np.uint8(255)).unsqueeze(2)
        data = OmniglotData(
            images=storage,
            names=tuple(parts[0][1] + parts[1][1]),
            num_background=len(parts[0][1]),
            sources=tuple(str(s.path) for s in sources),
        )
        _CACHE[key] = data
        return data


SPLIT_VERSIONS = (1, 2)


def paper_listing(names: Sequence[str]) -> list[int]:
    """Indices of ``names`` (``"ALPHABET/characterNN"``) in the order the paper's code lists
    its characters: all 50 alphabet folders merged in one folder (its ``fetch_data.sh``),
    ``sorted(os.listdir(...))`` for alphabets, then for characters (``read_dataset``)."""
    return sorted(range(len(names)), key=lambda i: tuple(names[i].split("/", 1)))


def split_order(
    names: Sequence[str],
    num_background: int,
    split: str = "paper",
    split_seed: int = 0,
    split_version: int = 2,
) -> tuple[list[int], list[int]]:
    """(train, test) character indices of ``names``, each in the split's own (shuffled) order.

    Version 2, the paper's code (``split_dataset`` after ``random.seed(0)``):

    - "paper": every character in ``paper_listing`` order, shuffled by Python's
      ``random.Random(split_seed).shuffle``; the first 1,200 train, the other 423 test. With
      ``split_seed`` 0 it is the split the paper's results were measured on.
    - "lake": the background characters, in the same listing order, shuffled the same way,
      train; the evaluation characters, in listing order, test.

    Version 1 (runs before version 2): ``numpy.random.default_rng(split_seed).permutation``
    of the background-first order, for "paper" of every character, for "lake" of the
    background ones. The shuffled training order decides which characters
    ``validation_classes`` holds out (the last ones).
    """
    if split not in ("paper", "lake"):
        raise ValueError(f"unknown Omniglot split {split!r} (expected 'paper' or 'lake')")
    if split_version not in SPLIT_VERSIONS:
        raise ValueError(f"unknown split_version {split_version!r} (expected 1 or 2)")
    n = len(names)
    if split == "paper" and n != TOTAL_CHARACTERS:
        raise DataError(
            f"the paper split needs all {TOTAL_CHARACTERS} characters, found {n}",
            None,
            EXPECTED_LAYOUT,
        )
    if split_version == 1:
        if split == "paper":
            order = np.random.default_rng(split_seed).permutation(n).tolist()
            return order[:PAPER_TRAIN_CHARACTERS], order[PAPER_TRAIN_CHARACTERS:]
        train = np.random.default_rng(split_seed).permutation(num_background).tolist()
        return train, list(range(num_background, n))
    listing = paper_listing(names)
    shuffle = random.Random(split_seed).shuffle
    if split == "paper":
        shuffle(listing)
        return listing[:PAPER_TRAIN_CHARACTERS], listing[PAPER_TRAIN_CHARACTERS:]
    background = [i for i in listing if i < num_background]
    shuffle(background)
    return background, [i for i in listing if i >= num_background]


def omniglot_splits(
    data: OmniglotData,
    split: str = "paper",
    split_seed: int = 0,
    validation_classes: int = 0,
    augment_rotations: bool = True,
    split_version: int = 2,
) -> ClassSplits:
    """Train / validation / test characters of ``data``, drawn by ``split_order``.

    The last ``validation_classes`` of the shuffled training characters become the validation
    set. Only the remaining training characters are augmented with rotations. Each split
    lists its characters in canonical order (the order of ``data``).
    """
    try:
        train_list, test_list = split_order(
            data.names, data.num_background, split, split_seed, split_version
        )
    except DataError as err:
        raise DataError(err.problem, ", ".join(data.sources), EXPECTED_LAYOUT) from err
    train_ids, test_ids = np.asarray(train_list, np.int64), np.asarray(test_list, np.int64)
    if not 0 <= validation_classes < len(train_ids):
        raise ValueError(
            f"validation_classes must be in [0, {len(train_ids)}) for the {split} split, "
            f"got {validation_classes}"
        )
    cut = len(train_ids) - validation_classes
    train_ids, val_ids = train_ids[:cut], train_ids[cut:]

    def view(ids: np.ndarray) -> TensorClassDataset:
        ids = np.sort(ids)
        return TensorClassDataset(data.images, ids, [data.names[i] for i in ids])

    train: ClassDataset = view(train_ids)
    if augment_rotations:
        train = RotatedClassDataset(train)
    return ClassSplits(train=train, validation=view(val_ids), test=view(test_ids))


def omniglot_names(data_dir: str | os.PathLike[str] | None = None) -> tuple[list[str], int]:
    """(every character's ``"ALPHABET/characterNN"`` in canonical order, how many are
    background): read from the file names and ``alphabets.json``, no image decoded."""
    names: list[str] = []
    counts = []
    for source in find_sources(data_dir):
        if source.kind == "npz":
            runs = _read_alphabets(source.path.parent / ALPHABETS_JSON, source.split)
            part = [
                f"{alphabet}/character{i:02d}"
                for alphabet, _, count in sorted(runs)
                for i in range(1, count + 1)
            ]
        elif source.kind == "zip":
            root = source.split + "/"
            layout = "a zip with " + _TREE_LAYOUT.format(root=source.split)
            try:
                with zipfile.ZipFile(source.path) as zf:
                    members = [
                        m[len(root) :] for m in zf.namelist() if m.startswith(root) and m[-1] != "/"
                    ]
            except (zipfile.BadZipFile, OSError) as err:
                raise DataError(f"corrupt or unreadable zip ({err})", source.path, layout) from err
            part = [name for name, _ in _index_tree(members, source.path, layout)]
        else:
            part = [name for name, _ in _index_tree(*_folder_listing(source))]
        names.extend(part)
        counts.append(len(part))
    return names, counts[0]


# --- reading ------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _nearest_indices(src: int, dst: int) -> np.ndarray:
    """Source pixel of each output pixel of Pillow's nearest-neighbour resize src -> dst.

    Asking Pillow itself (on an image whose pixels are their own coordinates) keeps the
    vectorised resize bit-identical to ``Image.resize`` on each image.
    """
    probe = Image.fromarray(np.arange(src, dtype=np.int32)[None, :])
    idx: np.ndarray = np.asarray(probe.resize((dst, 1), Image.Resampling.NEAREST), np.int64)[0]
    idx.setflags(write=False)
    return idx


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of the last two axes to (size, size)."""
    rows = _nearest_indices(images.shape[-2], size)
    cols = _nearest_indices(images.shape[-1], size)
    return images[..., rows[:, None], cols]


def _read_split(source: _Source, size: int) -> tuple[np.ndarray, list[str]]:
    """(bool array (characters, 20, size, size), names) of one split, canonical order."""
    if source.kind == "npz":
        return _read_npz(source, size)
    if source.kind == "zip":
        return _read_zip(source, size)
    return _read_folder(source, size)


def _read_alphabets(path: Path, split: str) -> list[tuple[str, int, int]]:
    key = split.removeprefix("images_")
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)[key]
        runs = [(str(e["alphabet"]), int(e["first_index"]), int(e["count"])) for e in entries]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"cannot read the '{key}' alphabets ({err})", path, _JSON_LAYOUT) from err
    return runs


def _read_npz(source: _Source, size: int) -> tuple[np.ndarray, list[str]]:
    """Stream the bool ``images`` array from the archive in chunks (the whole array is 200 MB
    decompressed) and resize each chunk; then reorder alphabets into sorted order."""
    path = source.path
    json_path = path.parent / ALPHABETS_JSON
    runs = _read_alphabets(json_path, source.split)
    try:
        with zipfile.ZipFile(path) as zf, zf.open("images.npy") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            if dtype != np.bool_ or fortran or len(shape) != 4 or shape[1] != DRAWERS:
                raise DataError(
                    f"'images' has dtype {dtype}, shape {shape}; not Omniglot", path, _NPZ_LAYOUT
                )
            n, _, h, w = shape
            out = np.empty((n, DRAWERS, size, size), dtype=bool)
            per_char = DRAWERS * h * w
            chunk = 64
            for start in range(0, n, chunk):
                k = min(chunk, n - start)
                buf = f.read(k * per_char)
                if len(buf) != k * per_char:
                    raise DataError("'images' is truncated", path, _NPZ_LAYOUT)
                block = np.frombuffer(buf, dtype=bool).reshape(k, DRAWERS, h, w)
                out[start : start + k] = _resize(block, size)
    except DataError:
        raise
    except KeyError as err:
        raise DataError("the archive has no 'images' array", path, _NPZ_LAYOUT) from err
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as err:
        raise DataError(f"corrupt or unreadable archive ({err})", path, _NPZ_LAYOUT) from err

    covered = sorted((first, count) for _, first, count in runs)
    position = 0
    for first, count in covered:
        if first != position or count < 1:
            break
        position += count
    if position != n or len({a for a, _, _ in runs}) != len(runs):
        raise DataError(
            f"the '{source.split}' alphabets do not cover the archive's {n} characters exactly",
            json_path,
            _JSON_LAYOUT,
        )
    order: list[int] = []
    names: list[str] = []
    for alphabet, first, count in sorted(runs):
        order.extend(range(first, first + count))
        names.extend(f"{alphabet}/character{i:02d}" for i in range(1, count + 1))
    return out[np.asarray(order)], names


def _index_tree(relpaths: Iterable[str], where: Path, layout: str) -> list[tuple[str, list[str]]]:
    """Group ``ALPHABET/characterNN/XXXX_YY.png`` paths into characters, canonical order.

    Returns ``[("ALPHABET/characterNN", [path of drawer 01, ..., drawer 20]), ...]``. Hidden
    entries (".DS_Store", "._x.png") and files that are not PNGs are ignored; anything else
    out of place is an error, so that a wrongly packed archive fails loudly instead of
    silently yielding different classes.
    """
    chars: dict[tuple[str, int], tuple[str, dict[int, str]]] = {}
    for rel in relpaths:
        parts = rel.split("/")
        if any(p.startswith(".") for p in parts) or not parts[-1].lower().endswith(".png"):
            continue
        if len(parts) != 3:
            raise DataError(f"PNG at an unexpected place: '{rel}'", where, layout)
        alphabet, folder, filename = parts
        char_match = _CHAR_RE.fullmatch(folder)
        file_match = _FILE_RE.fullmatch(filename)
        if char_match is None or file_match is None:
            raise DataError(f"unexpected name: '{rel}'", where, layout)
        _, drawers = chars.setdefault((alphabet, int(char_match.group(1))), (folder, {}))
        drawer = int(file_match.group(2))
        if drawer in drawers:
            raise DataError(f"two files for drawer {drawer:02d}: '{rel}'", where, layout)
        drawers[drawer] = rel
    if not chars:
        raise DataError("no character images found", where, layout)
    result = []
    for (alphabet, _), (folder, drawers) in sorted(chars.items()):
        if sorted(drawers) != list(range(1, DRAWERS + 1)):
            found = ", ".join(f"{d:02d}" for d in sorted(drawers))
            raise DataError(
                f"'{alphabet}/{folder}' has drawers [{found}], expected 01..{DRAWERS:02d}",
                where,
                layout,
            )
        result.append((f"{alphabet}/{folder}", [drawers[d] for d in range(1, DRAWERS + 1)]))
    return result


def _decode_png(data: bytes, size: int, what: str) -> np.ndarray:
    """One PNG -> bool (size, size), True = background; any mode, thresholded at mid-grey."""
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            pixels = np.array(img) if img.mode == "1" else np.array(img.convert("L")) >= 128
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot decode image ({err})", what, "a PNG image") from err
    return _resize(pixels, size)


def _decode_all(
    chars: list[tuple[str, list[str]]], read: Callable[[str], bytes], size: int, where: str
) -> tuple[np.ndarray, list[str]]:
    out = np.empty((len(chars), DRAWERS, size, size), dtype=bool)
    for c, (_, members) in enumerate(chars):
        for d, member in enumerate(members):
            out[c, d] = _decode_png(read(member), size, f"{where}/{member}")
    return out, [name for name, _ in chars]


def _read_zip(source: _Source, size: int) -> tuple[np.ndarray, list[str]]:
    path, root = source.path, source.split + "/"
    layout = "a zip with " + _TREE_LAYOUT.format(root=source.split)
    try:
        with zipfile.ZipFile(path) as zf:
            members = {
                info.filename[len(root) :]: info
                for info in zf.infolist()
                if info.filename.startswith(root) and not info.is_dir()
            }
            chars = _index_tree(members, path, layout)
            return _decode_all(chars, lambda m: zf.read(members[m]), size, str(path))
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as err:
        raise DataError(f"corrupt or unreadable zip ({err})", path, layout) from err


def _folder_listing(source: _Source) -> tuple[list[str], Path, str]:
    """(every file's path relative to the split folder, the folder, its expected layout)."""
    root = source.path
    relpaths: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        relpaths.extend(prefix + name for name in filenames)
    return relpaths, root, _TREE_LAYOUT.format(root=source.split)


def _read_folder(source: _Source, size: int) -> tuple[np.ndarray, list[str]]:
    relpaths, root, layout = _folder_listing(source)
    chars = _index_tree(relpaths, root, layout)

    def read(rel: str) -> bytes:
        try:
            return (root / rel).read_bytes()
        except OSError as err:
            raise DataError(f"cannot read file ({err})", root / rel, layout) from err

    return _decode_all(chars, read, size, str(root))
