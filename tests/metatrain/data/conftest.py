"""Shared fixtures: the real Omniglot folder, raw npz images, and small official-style trees.

The real data is found through METATRAIN_DATA (default: ``<repo>/../shared/data``); tests that
need it are skipped with a message when it is absent.
"""

from __future__ import annotations

import io
import json
import os
import types
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metatrain.data.omniglot import load_omniglot, omniglot_available

REPO = Path(__file__).resolve().parents[3]
DEFAULT_DATA = REPO.parent / "shared" / "data"

# Characters copied into the small test zips: (split, alphabet) -> character numbers.
# Alphabets chosen so that their npz order is the reverse of their sorted order.
SMALL_TREE = {
    ("images_background", "Latin"): [1, 2, 3],
    ("images_background", "Anglo-Saxon_Futhorc"): [1, 2, 3],
    ("images_evaluation", "Syriac_(Serto)"): [1, 2],
    ("images_evaluation", "Sylheti"): [1, 2],
}
BACKGROUND_CHARACTERS = 964


def make_config(**overrides) -> types.SimpleNamespace:
    """The config fields the data layer reads, Omniglot paper-split defaults."""
    fields = dict(
        dataset="omniglot",
        data_dir=None,
        split="paper",
        split_seed=0,
        split_version=2,
        validation_classes=0,
        augment_rotations=True,
        image_size=28,
        seed=0,
    )
    fields.update(overrides)
    return types.SimpleNamespace(**fields)


@pytest.fixture(scope="session")
def data_root() -> Path:
    return Path(os.environ.get("METATRAIN_DATA") or DEFAULT_DATA)


@pytest.fixture(scope="session")
def omniglot_dir(data_root: Path) -> Path:
    folder = data_root / "omniglot"
    if not omniglot_available(folder):
        pytest.skip(f"Omniglot npz not found in {folder} (set METATRAIN_DATA)")
    return folder


@pytest.fixture(scope="session")
def omniglot(omniglot_dir: Path):
    """The real Omniglot at 28x28 (decoded once per test session)."""
    return load_omniglot(omniglot_dir, 28)


@pytest.fixture(scope="session")
def alphabets(omniglot_dir: Path) -> dict:
    return json.loads((omniglot_dir / "alphabets.json").read_text())


def _runs(alphabets: dict, split: str) -> dict[str, int]:
    key = split.removeprefix("images_")
    return {a["alphabet"]: a["first_index"] for a in alphabets[key]}


def read_raw_characters(npz: Path, wanted: set[int]) -> dict[int, np.ndarray]:
    """Raw 105x105 bool images of some characters, streaming the archive only as far as needed."""
    out = {}
    with zipfile.ZipFile(npz) as zf, zf.open("images.npy") as f:
        np.lib.format.read_magic(f)
        shape, _, _ = np.lib.format.read_array_header_1_0(f)
        per_char = int(np.prod(shape[1:]))
        for i in range(max(wanted) + 1):
            block = f.read(per_char)
            if i in wanted:
                out[i] = np.frombuffer(block, dtype=bool).reshape(shape[1:]).copy()
    return out


@pytest.fixture(scope="session")
def raw_small_tree(omniglot_dir: Path, alphabets: dict) -> dict[str, np.ndarray]:
    """Raw npz images of SMALL_TREE's characters and of Alphabet_of_the_Magi/character01,
    keyed by canonical name ("Latin/character01")."""
    wanted: dict[str, dict[int, str]] = {"images_background": {}, "images_evaluation": {}}
    for (split, alphabet), numbers in SMALL_TREE.items():
        first = _runs(alphabets, split)[alphabet]
        for k in numbers:
            wanted[split][first + k - 1] = f"{alphabet}/character{k:02d}"
    magi = _runs(alphabets, "images_background")["Alphabet_of_the_Magi"]
    wanted["images_background"][magi] = "Alphabet_of_the_Magi/character01"
    raw = {}
    for split, by_index in wanted.items():
        images = read_raw_characters(omniglot_dir / f"{split}.npz", set(by_index))
        raw.update({name: images[i] for i, name in by_index.items()})
    return raw


def png_bytes(image: np.ndarray) -> bytes:
    """A 1-bit PNG like the official ones (True = white background)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def small_tree_members(raw_small_tree, alphabets: dict) -> dict[str, bytes]:
    """Official member names -> PNG bytes for SMALL_TREE, e.g.
    "images_background/Latin/character01/0683_01.png" (file id = npz index + 1, evaluation
    ids after the 964 background ones)."""
    members = {}
    for (split, alphabet), numbers in SMALL_TREE.items():
        first = _runs(alphabets, split)[alphabet]
        offset = 1 if split == "images_background" else BACKGROUND_CHARACTERS + 1
        for k in numbers:
            file_id = first + k - 1 + offset
            drawings = raw_small_tree[f"{alphabet}/character{k:02d}"]
            for drawer in range(20):
                name = f"{split}/{alphabet}/character{k:02d}/{file_id:04d}_{drawer + 1:02d}.png"
                members[name] = png_bytes(drawings[drawer])
    return members


def write_zips(folder: Path, members: dict[str, bytes], seed: int = 0) -> None:
    """One zip per split, members in a shuffled order (order must not matter). Members outside
    "images_evaluation/" (including misplaced ones) go into the background zip."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(members)
    np.random.default_rng(seed).shuffle(names)
    for split in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(folder / f"{split}.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            for name in names:
                in_evaluation = name.startswith("images_evaluation/")
                if in_evaluation == (split == "images_evaluation"):
                    zf.writestr(name, members[name])


def write_folders(folder: Path, members: dict[str, bytes]) -> None:
    for name, data in members.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.fixture
def omniglot_tree(tmp_path: Path, small_tree_members) -> Callable[..., Path]:
    """Factory: a data folder holding SMALL_TREE as "zip" or "folder", optionally edited."""

    def make(kind: str = "zip", edit: Callable[[dict[str, bytes]], None] | None = None) -> Path:
        members = dict(small_tree_members)
        if edit is not None:
            edit(members)
        folder = tmp_path / f"omniglot_{kind}"
        (write_zips if kind == "zip" else write_folders)(folder, members)
        return folder

    return make


@pytest.fixture(scope="session")
def tree_writer() -> types.SimpleNamespace:
    """The writing helpers, for tests that build their own trees."""
    return types.SimpleNamespace(
        png_bytes=png_bytes, write_zips=write_zips, write_folders=write_folders
    )


@pytest.fixture(scope="session")
def config_factory() -> Callable[..., types.SimpleNamespace]:
    """``make_config`` as a fixture."""
    return make_config
