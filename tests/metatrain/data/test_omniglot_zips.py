"""Omniglot from the official zips and from their extracted folders.

The small trees hold real npz drawings written as 1-bit PNGs under official names, so the
loaded pixels can be compared with the npz pipeline character by character.
"""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metatrain.data import DataError, omniglot_available
from metatrain.data.omniglot import find_sources, load_omniglot, omniglot_splits

EXPECTED_NAMES = [
    "Anglo-Saxon_Futhorc/character01",
    "Anglo-Saxon_Futhorc/character02",
    "Anglo-Saxon_Futhorc/character03",
    "Latin/character01",
    "Latin/character02",
    "Latin/character03",
    "Sylheti/character01",
    "Sylheti/character02",
    "Syriac_(Serto)/character01",
    "Syriac_(Serto)/character02",
]


def assert_same_as_npz(data, omniglot) -> None:
    assert list(data.names) == EXPECTED_NAMES
    for i, name in enumerate(data.names):
        assert torch.equal(data.images[i], omniglot.images[omniglot.names.index(name)]), name


def test_zips_load_in_canonical_order_with_npz_pixels(omniglot_tree, omniglot):
    folder = omniglot_tree("zip")
    assert [s.kind for s in find_sources(folder)] == ["zip", "zip"]
    data = load_omniglot(folder)
    assert data.images.shape == (10, 20, 1, 28, 28)
    assert data.num_background == 6
    assert_same_as_npz(data, omniglot)


def test_zips_are_read_without_extracting(omniglot_tree):
    folder = omniglot_tree("zip")
    before = sorted(p.name for p in folder.iterdir())
    load_omniglot(folder)
    assert (
        sorted(p.name for p in folder.iterdir())
        == before
        == [
            "images_background.zip",
            "images_evaluation.zip",
        ]
    )


def test_extracted_folders_load_the_same_as_the_zips(omniglot_tree, tmp_path, omniglot):
    zipped = omniglot_tree("zip")
    extracted = tmp_path / "extracted"
    for split in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(zipped / f"{split}.zip") as zf:
            zf.extractall(extracted)
    assert [s.kind for s in find_sources(extracted)] == ["folder", "folder"]
    assert_same_as_npz(load_omniglot(extracted), omniglot)


def test_a_zip_and_a_folder_can_be_mixed(omniglot_tree, omniglot):
    folder = omniglot_tree("folder")
    with zipfile.ZipFile(folder / "images_evaluation.zip", "w") as zf:
        for path in sorted((folder / "images_evaluation").rglob("*.png")):
            zf.write(path, path.relative_to(folder).as_posix())
    # the zip wins over the folder of the same split; delete the folder to prove it is unused
    for path in sorted((folder / "images_evaluation").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (folder / "images_evaluation").rmdir()
    assert [s.kind for s in find_sources(folder)] == ["folder", "zip"]
    assert_same_as_npz(load_omniglot(folder), omniglot)


def test_npz_is_preferred_over_zip(omniglot_tree, omniglot_dir):
    folder = omniglot_tree("zip")
    (folder / "images_background.npz").symlink_to(omniglot_dir / "images_background.npz")
    (folder / "alphabets.json").symlink_to(omniglot_dir / "alphabets.json")
    assert [s.kind for s in find_sources(folder)] == ["npz", "zip"]


def test_lake_split_works_on_a_partial_tree_and_paper_split_refuses_it(omniglot_tree):
    data = load_omniglot(omniglot_tree("folder"))
    s = omniglot_splits(data, "lake", 0, 1, augment_rotations=True)
    assert (s.train.num_classes, s.validation.num_classes, s.test.num_classes) == (20, 1, 4)
    with pytest.raises(DataError, match="needs all 1623 characters, found 10"):
        omniglot_splits(data, "paper")


def test_non_png_and_hidden_files_are_ignored(omniglot_tree, small_tree_members, omniglot):
    def add_junk(members):
        members["images_background/Latin/.DS_Store"] = b"junk"
        members["images_background/Latin/character01/Thumbs.db"] = b"junk"
        members["images_background/Latin/character01/._0683_01.png"] = b"apple double"
        members["images_background/README.txt"] = b"hello"

    for kind in ("zip", "folder"):
        assert_same_as_npz(load_omniglot(omniglot_tree(kind, add_junk)), omniglot)


def test_greyscale_pngs_are_thresholded_like_one_bit_ones(omniglot_tree, small_tree_members):
    def to_greyscale(members):
        for name in list(members)[:20]:
            img = Image.open(io.BytesIO(members[name])).convert("L")
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            members[name] = buf.getvalue()

    plain = load_omniglot(omniglot_tree("zip"))
    grey = load_omniglot(omniglot_tree("folder", to_greyscale))
    assert torch.equal(plain.images, grey.images)


# --- layout errors ------------------------------------------------------------------------------


def _drop(prefix: str):
    def edit(members):
        for name in [n for n in members if n.startswith(prefix)]:
            del members[name]

    return edit


@pytest.mark.parametrize("kind", ["zip", "folder"])
def test_it_names_a_character_with_missing_drawers(omniglot_tree, kind):
    folder = omniglot_tree(kind, _drop("images_background/Latin/character02/0684_07"))
    with pytest.raises(DataError) as err:
        load_omniglot(folder)
    message = str(err.value)
    assert "'Latin/character02' has drawers" in message and "06, 08" in message
    assert str(folder / "images_background") in message
    assert "characterNN/XXXX_YY.png" in message


@pytest.mark.parametrize("kind", ["zip", "folder"])
def test_it_rejects_pngs_outside_alphabet_character_folders(omniglot_tree, kind):
    def misplace(members):
        members["images_background/Latin/0683_01.png"] = members.pop(
            "images_background/Latin/character01/0683_01.png"
        )

    with pytest.raises(DataError, match="PNG at an unexpected place: 'Latin/0683_01.png'"):
        load_omniglot(omniglot_tree(kind, misplace))


def test_it_rejects_unexpected_character_folder_names(omniglot_tree):
    def rename(members):
        for name in [n for n in members if "/Latin/character03/" in n]:
            members[name.replace("character03", "glyph03")] = members.pop(name)

    with pytest.raises(DataError, match="unexpected name: 'Latin/glyph03/0685_01.png'"):
        load_omniglot(omniglot_tree("zip", rename))


def test_it_rejects_a_zip_without_the_split_root_folder(omniglot_tree):
    def strip_root(members):
        for name in list(members):
            if name.startswith("images_background/"):
                members[name.removeprefix("images_background/")] = members.pop(name)

    folder = omniglot_tree("zip", strip_root)
    with pytest.raises(DataError, match="no character images found") as err:
        load_omniglot(folder)
    assert str(folder / "images_background.zip") in str(err.value)
    assert "images_background/ALPHABET/characterNN/XXXX_YY.png" in str(err.value)


def test_it_rejects_an_empty_extracted_folder(tmp_path, omniglot_tree):
    folder = omniglot_tree("zip")
    (folder / "images_background.zip").unlink()
    (folder / "images_background").mkdir()
    with pytest.raises(DataError, match="no character images found"):
        load_omniglot(folder)


def test_it_rejects_a_corrupt_zip(omniglot_tree):
    folder = omniglot_tree("zip")
    (folder / "images_evaluation.zip").write_bytes(b"not a zip at all")
    assert omniglot_available(folder)  # cheap check: names only
    with pytest.raises(DataError, match="corrupt or unreadable zip") as err:
        load_omniglot(folder)
    assert str(folder / "images_evaluation.zip") in str(err.value)


def test_it_rejects_a_zip_with_a_damaged_member(omniglot_tree):
    folder = omniglot_tree("zip")
    path = folder / "images_evaluation.zip"
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("images_evaluation/Sylheti/character01/1503_01.png")
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 2
    raw[start : start + 8] = bytes(8)
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as err:
        load_omniglot(folder)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("kind", ["zip", "folder"])
def test_it_names_an_undecodable_png(omniglot_tree, kind):
    def damage(members):
        members["images_evaluation/Sylheti/character02/1504_13.png"] = b"\x89PNG broken"

    with pytest.raises(DataError, match="cannot decode image") as err:
        load_omniglot(omniglot_tree(kind, damage))
    assert "Sylheti/character02/1504_13.png" in str(err.value)


def test_it_rejects_a_missing_evaluation_split(omniglot_tree):
    folder = omniglot_tree("zip")
    (folder / "images_evaluation.zip").unlink()
    assert not omniglot_available(folder)
    with pytest.raises(DataError, match="'images_evaluation' not found"):
        load_omniglot(folder)


def test_the_small_tree_uses_official_file_ids(small_tree_members):
    # Latin is npz index 682 in the background split, so its first file id is 0683; Sylheti is
    # evaluation index 538, so 964 + 538 + 1 = 1503.
    assert "images_background/Latin/character01/0683_01.png" in small_tree_members
    assert "images_evaluation/Sylheti/character01/1503_20.png" in small_tree_members
    assert len(small_tree_members) == 20 * 10


# --- the complete data set as official zips -----------------------------------------------------


@pytest.mark.slow
def test_full_official_zips_give_exactly_the_npz_data(
    tmp_path, omniglot_dir, omniglot, alphabets, tree_writer
):
    """All 32,460 drawings written as official zips load pixel-identical to the npz: the paper
    split is the same whatever the source. Also reports the decode time."""
    members: dict[str, bytes] = {}
    for split, key, offset in (
        ("images_background", "background", 1),
        ("images_evaluation", "evaluation", 965),
    ):
        images = np.load(omniglot_dir / f"{split}.npz")["images"]
        for run in alphabets[key]:
            for k in range(run["count"]):
                i = run["first_index"] + k
                for d in range(20):
                    name = f"{split}/{run['alphabet']}/character{k + 1:02d}/{i + offset:04d}_{d + 1:02d}.png"
                    members[name] = tree_writer.png_bytes(images[i, d])
        del images
    tree_writer.write_zips(tmp_path / "zips", members)
    start = time.perf_counter()
    data = load_omniglot(tmp_path / "zips")
    seconds = time.perf_counter() - start
    print(f"\ndecoding 32,460 PNGs from the zips took {seconds:.2f} s")
    assert data.names == omniglot.names
    assert torch.equal(data.images, omniglot.images)
    a = omniglot_splits(data, "paper", 0, 10, True)
    b = omniglot_splits(omniglot, "paper", 0, 10, True)
    assert a.train.names == b.train.names and a.test.names == b.test.names


def test_conftest_writes_every_member(tmp_path, small_tree_members, tree_writer):
    tree_writer.write_folders(tmp_path, small_tree_members)
    assert len(list(Path(tmp_path).rglob("*.png"))) == len(small_tree_members)
