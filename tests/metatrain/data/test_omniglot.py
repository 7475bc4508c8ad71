"""Omniglot from the npz archives: order, preprocessing, splits, rotations, layout errors."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metatrain.data import DataError, RotatedClassDataset, omniglot_available
from metatrain.data.omniglot import (
    EXPECTED_LAYOUT,
    _nearest_indices,
    _resize,
    load_omniglot,
    omniglot_splits,
)


def paper_resize(image: np.ndarray, size: int = 28) -> np.ndarray:
    """What the paper's code does to one PNG: ``Image.open(f).resize((28, 28))`` (default
    resample), then ``np.array(img).astype('float32')``."""
    return np.array(Image.fromarray(image).resize((size, size))).astype(np.float32)


# --- loading ----------------------------------------------------------------------------------


def test_it_loads_every_character_with_twenty_drawers(omniglot):
    assert omniglot.images.shape == (1623, 20, 1, 28, 28)
    assert omniglot.images.dtype == torch.uint8
    assert omniglot.num_background == 964
    assert len(set(omniglot.names)) == 1623


def test_it_orders_alphabets_by_sorted_folder_name_then_character_number(omniglot, alphabets):
    for key, names in (
        ("background", omniglot.names[:964]),
        ("evaluation", omniglot.names[964:]),
    ):
        runs = sorted((a["alphabet"], a["count"]) for a in alphabets[key])
        expected = [f"{a}/character{k:02d}" for a, n in runs for k in range(1, n + 1)]
        assert list(names) == expected
    assert omniglot.names[0] == "Alphabet_of_the_Magi/character01"
    assert omniglot.names[964] == "Angelic/character01"


def test_the_npz_order_is_not_sorted_so_reordering_matters(alphabets):
    # Documents why the loader reorders the archives: their alphabets follow file ids.
    for key in ("background", "evaluation"):
        folders = [a["alphabet"] for a in sorted(alphabets[key], key=lambda a: a["first_index"])]
        assert folders != sorted(folders)


def test_images_match_the_paper_preprocessing_of_the_raw_npz(omniglot, raw_small_tree):
    for name, raw in raw_small_tree.items():
        i = omniglot.names.index(name)
        loaded = omniglot.images[i, :, 0].numpy().astype(np.float32) / 255.0
        expected = np.stack([paper_resize(raw[d]) for d in range(20)])
        np.testing.assert_array_equal(loaded, expected, err_msg=name)


def test_vectorised_resize_equals_pillow_for_other_sizes(raw_small_tree):
    drawing = raw_small_tree["Latin/character02"][3]
    for size in (14, 28, 50, 84, 105):
        np.testing.assert_array_equal(
            _resize(drawing, size).astype(np.float32), paper_resize(drawing, size)
        )
    assert _nearest_indices(105, 28).tolist()[:4] == [1, 5, 9, 13]


def test_images_are_float_in_0_1_with_white_background(omniglot):
    splits = omniglot_splits(omniglot, augment_rotations=False)
    x = splits.train.images(0, range(20))
    assert x.shape == (20, 1, 28, 28) and x.dtype == torch.float32
    assert set(torch.unique(x).tolist()) == {0.0, 1.0}
    assert x.mean() > 0.7  # mostly background, and background is 1


def test_it_decodes_once_per_process(omniglot_dir, omniglot):
    assert load_omniglot(omniglot_dir, 28) is omniglot


def test_other_image_sizes_are_cached_separately(omniglot_dir, omniglot):
    small = load_omniglot(omniglot_dir, 14)
    assert small.images.shape == (1623, 20, 1, 14, 14)
    assert small is not omniglot


# --- splits -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("split", "validation", "rotations", "expected"),
    [
        ("paper", 0, False, (1200, 0, 423)),
        ("paper", 0, True, (4800, 0, 423)),
        ("paper", 100, True, (4400, 100, 423)),
        ("lake", 0, False, (964, 0, 659)),
        ("lake", 0, True, (3856, 0, 659)),
        ("lake", 64, True, (3600, 64, 659)),
    ],
)
def test_split_class_counts(omniglot, split, validation, rotations, expected):
    splits = omniglot_splits(omniglot, split, 0, validation, rotations)
    got = (splits.train.num_classes, splits.validation.num_classes, splits.test.num_classes)
    assert got == expected


@pytest.mark.parametrize("split", ["paper", "lake"])
def test_splits_are_disjoint_and_cover_every_character(omniglot, split):
    s = omniglot_splits(omniglot, split, 3, 50, augment_rotations=False)
    train, val, test = set(s.train.names), set(s.validation.names), set(s.test.names)
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(omniglot.names)


def test_lake_split_tests_on_the_evaluation_alphabets(omniglot):
    s = omniglot_splits(omniglot, "lake", 0, 10, augment_rotations=False)
    assert s.test.names == list(omniglot.names[964:])
    assert set(s.train.names) | set(s.validation.names) == set(omniglot.names[:964])


def test_paper_split_is_fixed_by_split_seed(omniglot):
    a = omniglot_splits(omniglot, "paper", 0, 20, False)
    b = omniglot_splits(omniglot, "paper", 0, 20, False)
    c = omniglot_splits(omniglot, "paper", 1, 20, False)
    assert a.test.names == b.test.names and a.validation.names == b.validation.names
    assert a.test.names != c.test.names
    # background and evaluation characters are both in the shuffled test set
    assert {n.split("/")[0] for n in a.test.names} & {n.split("/")[0] for n in omniglot.names[:964]}
    assert {n.split("/")[0] for n in a.test.names} & {n.split("/")[0] for n in omniglot.names[964:]}


def test_version_1_paper_split_test_set_is_the_tail_of_the_seeded_permutation(omniglot):
    order = np.random.default_rng(7).permutation(1623)
    s = omniglot_splits(omniglot, "paper", 7, 30, False, split_version=1)
    assert s.test.names == [omniglot.names[i] for i in np.sort(order[1200:])]
    assert s.validation.names == [omniglot.names[i] for i in np.sort(order[1170:1200])]


def test_validation_and_test_classes_are_not_rotated(omniglot):
    s = omniglot_splits(omniglot, "paper", 0, 40, True)
    assert isinstance(s.train, RotatedClassDataset)
    assert not any("+rot" in n for n in s.validation.names + s.test.names)
    assert s.train.names[:4] == [
        s.train.base.names[0] + suffix for suffix in ("", "+rot90", "+rot180", "+rot270")
    ]


def test_rotated_classes_are_rot90_of_the_original(omniglot, raw_small_tree):
    s = omniglot_splits(omniglot, "lake", 0, 0, True)
    base_index = s.train.base.names.index("Latin/character01")
    original = s.train.base.images(base_index, range(20))
    for k in range(4):
        rotated = s.train.images(4 * base_index + k, range(20))
        assert torch.equal(rotated, torch.rot90(original, k, dims=(-2, -1)))
    # and it is the same as the paper code's PIL rotate (counter-clockwise) after the resize
    pil = Image.fromarray(raw_small_tree["Latin/character01"][5]).resize((28, 28)).rotate(90)
    np.testing.assert_array_equal(
        s.train.images(4 * base_index + 1, [5])[0, 0].numpy(), np.array(pil).astype(np.float32)
    )
    assert not torch.equal(s.train.images(4 * base_index + 1, [5]), original[5:6])


def test_it_rejects_too_many_validation_classes(omniglot):
    with pytest.raises(ValueError, match="validation_classes"):
        omniglot_splits(omniglot, "paper", 0, 1200, True)
    with pytest.raises(ValueError, match="validation_classes"):
        omniglot_splits(omniglot, "lake", 0, -1, True)


def test_it_rejects_an_unknown_split(omniglot):
    with pytest.raises(ValueError, match="unknown Omniglot split 'omniglot'"):
        omniglot_splits(omniglot, "omniglot")


# --- availability and layout errors -----------------------------------------------------------


def test_omniglot_available_checks_files_without_decoding(omniglot_dir, tmp_path, monkeypatch):
    assert omniglot_available(omniglot_dir)
    assert not omniglot_available(tmp_path)
    assert not omniglot_available(tmp_path / "missing")
    monkeypatch.setenv("METATRAIN_DATA", str(omniglot_dir.parent))
    assert omniglot_available()
    monkeypatch.delenv("METATRAIN_DATA")
    assert not omniglot_available()


def test_it_says_to_set_metatrain_data_when_no_folder_is_known(monkeypatch):
    monkeypatch.delenv("METATRAIN_DATA", raising=False)
    with pytest.raises(DataError, match="METATRAIN_DATA"):
        load_omniglot()


def test_data_dir_none_means_metatrain_data_omniglot(monkeypatch, omniglot_dir, omniglot):
    monkeypatch.setenv("METATRAIN_DATA", str(omniglot_dir.parent))
    assert load_omniglot(None, 28) is omniglot


def test_it_names_a_missing_folder_and_the_layout(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        load_omniglot(missing)
    assert str(missing) in str(err.value)
    assert EXPECTED_LAYOUT in str(err.value)
    assert err.value.path == str(missing)


def test_it_names_a_missing_split(tmp_path, omniglot_dir):
    shutil.copy(omniglot_dir / "images_background.npz", tmp_path)
    shutil.copy(omniglot_dir / "alphabets.json", tmp_path)
    with pytest.raises(DataError, match="'images_evaluation' not found") as err:
        load_omniglot(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_it_requires_alphabets_json_next_to_the_npz(tmp_path, omniglot_dir):
    for split in ("images_background", "images_evaluation"):
        (tmp_path / f"{split}.npz").symlink_to(omniglot_dir / f"{split}.npz")
    with pytest.raises(DataError, match="alphabets.json") as err:
        load_omniglot(tmp_path)
    assert str(tmp_path / "alphabets.json") in str(err.value)
    assert not omniglot_available(tmp_path)


def _npz_folder(tmp_path: Path, omniglot_dir: Path) -> Path:
    shutil.copy(omniglot_dir / "alphabets.json", tmp_path)
    (tmp_path / "images_background.npz").symlink_to(omniglot_dir / "images_background.npz")
    return tmp_path


def test_it_rejects_a_corrupt_npz(tmp_path, omniglot_dir):
    folder = _npz_folder(tmp_path, omniglot_dir)
    bad = folder / "images_evaluation.npz"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip archive")
    with pytest.raises(DataError, match="corrupt or unreadable archive") as err:
        load_omniglot(folder)
    assert str(bad) in str(err.value) and "images" in err.value.expected


def test_it_rejects_an_npz_with_the_wrong_array(tmp_path, omniglot_dir):
    folder = _npz_folder(tmp_path, omniglot_dir)
    np.savez(folder / "images_evaluation.npz", images=np.zeros((3, 5, 10, 10), dtype=np.uint8))
    with pytest.raises(DataError, match="not Omniglot") as err:
        load_omniglot(folder)
    assert "images_evaluation.npz" in str(err.value)


def test_it_rejects_an_npz_without_an_images_array(tmp_path, omniglot_dir):
    folder = _npz_folder(tmp_path, omniglot_dir)
    np.savez(folder / "images_evaluation.npz", labels=np.zeros(3))
    with pytest.raises(DataError, match="no 'images' array"):
        load_omniglot(folder)


def test_it_rejects_alphabets_that_do_not_cover_the_archive(tmp_path, omniglot_dir):
    folder = _npz_folder(tmp_path, omniglot_dir)
    table = json.loads((folder / "alphabets.json").read_text())
    table["evaluation"] = table["evaluation"][:-1]
    (folder / "alphabets.json").write_text(json.dumps(table))
    (folder / "images_evaluation.npz").symlink_to(omniglot_dir / "images_evaluation.npz")
    with pytest.raises(DataError, match="do not cover") as err:
        load_omniglot(folder)
    assert "alphabets.json" in str(err.value)


def test_it_rejects_an_unreadable_alphabets_json(tmp_path, omniglot_dir):
    folder = _npz_folder(tmp_path, omniglot_dir)
    (folder / "images_evaluation.npz").symlink_to(omniglot_dir / "images_evaluation.npz")
    table = json.loads((folder / "alphabets.json").read_text())
    del table["evaluation"]
    (folder / "alphabets.json").write_text(json.dumps(table))
    with pytest.raises(DataError, match="cannot read the 'evaluation' alphabets"):
        load_omniglot(folder)


def test_data_errors_survive_pickling():
    err = DataError("broken", "/some/path", "a layout")
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and copy.path == "/some/path" and copy.expected == "a layout"
    assert isinstance(copy, ValueError)
