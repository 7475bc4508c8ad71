"""The Omniglot splits as the paper's code draws them, and the ``split`` command that lists them.

The expected lists are built here from the archives' alphabet names and character counts
(``alphabets.json``) alone, the way openai/supervised-reptile does: both zips' alphabets in one
folder, ``sorted(os.listdir(...))`` for alphabets and characters, ``random.seed(0)`` then
``random.shuffle``, the first 1,200 train.
"""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest

from metatrain import cli
from metatrain.data import DataError, omniglot_names, split_order
from metatrain.data.omniglot import load_omniglot, omniglot_splits


def official_listing(alphabets: dict, keys: tuple[str, ...] = ("background", "evaluation")):
    """Every character of the alphabets under ``keys``, as the paper's ``read_dataset`` lists
    them from one merged folder."""
    runs = {a["alphabet"]: a["count"] for key in keys for a in alphabets[key]}
    return [
        f"{alphabet}/character{i:02d}"
        for alphabet in sorted(runs)
        for i in range(1, runs[alphabet] + 1)
    ]


def split_command(*argv: str) -> tuple[int, dict, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["split", *argv], out=out, err=err)
    return code, json.loads(out.getvalue()) if code == 0 else {}, err.getvalue()


def test_the_split_command_prints_the_paper_codes_split(omniglot_dir, alphabets):
    characters = official_listing(alphabets)
    random.seed(0)
    random.shuffle(characters)
    code, split, err = split_command("--split", "paper", "--data-dir", str(omniglot_dir))
    assert code == 0, err
    assert split == {"train": characters[:1200], "test": characters[1200:]}
    # pinned: the first test characters of the paper's split
    assert split["test"][:3] == [
        "Malayalam/character17",
        "Mkhedruli_(Georgian)/character07",
        "Japanese_(hiragana)/character33",
    ]


def test_split_seed_shuffles_the_same_listing_otherwise(omniglot_dir, alphabets):
    characters = official_listing(alphabets)
    random.Random(5).shuffle(characters)
    code, split, _ = split_command("--split-seed", "5", "--data-dir", str(omniglot_dir))
    assert code == 0
    assert split["test"] == characters[1200:] and len(split["train"]) == 1200


def test_the_lake_split_tests_on_the_evaluation_alphabets_in_listing_order(omniglot_dir, alphabets):
    background = official_listing(alphabets, ("background",))
    random.Random(0).shuffle(background)
    code, split, _ = split_command("--split", "lake", "--data-dir", str(omniglot_dir))
    assert code == 0
    assert split == {"train": background, "test": official_listing(alphabets, ("evaluation",))}


def test_version_1_is_the_earlier_numpy_order_and_differs_from_the_paper(omniglot_dir, omniglot):
    names = omniglot.names
    code, old, _ = split_command("--split-version", "1", "--data-dir", str(omniglot_dir))
    assert code == 0
    order = np.random.default_rng(0).permutation(1623)
    assert old["test"] == [names[i] for i in order[1200:]]
    _, new, _ = split_command("--data-dir", str(omniglot_dir))
    assert len(set(old["test"]) & set(new["test"])) == 105  # of 423: a different test set


def test_loaded_splits_hold_the_command_s_characters(omniglot):
    train, test = split_order(omniglot.names, omniglot.num_background, "paper", 0, 2)
    s = omniglot_splits(omniglot, "paper", 0, 30, False, split_version=2)
    assert s.test.names == [omniglot.names[i] for i in sorted(test)]  # canonical order
    assert set(s.validation.names) == {omniglot.names[i] for i in train[-30:]}
    old = omniglot_splits(omniglot, "paper", 0, 0, False, split_version=1)
    assert old.test.names != s.test.names


def test_names_come_from_file_names_alone_and_match_the_decoded_ones(omniglot_tree):
    for kind in ("zip", "folder"):
        folder = omniglot_tree(kind)
        assert omniglot_names(folder) == (list(load_omniglot(folder).names), 6)


def test_the_split_command_explains_missing_data_and_partial_data(tmp_path, omniglot_tree):
    code, _, err = split_command("--data-dir", str(tmp_path / "none"))
    assert code == 2 and "the Omniglot folder does not exist" in err
    code, _, err = split_command("--data-dir", str(omniglot_tree("zip")))
    assert code == 2 and "needs all 1623 characters, found 10" in err
    with pytest.raises(ValueError, match="split_version"):
        split_order(["A/character01"], 1, "lake", 0, 3)
    with pytest.raises(DataError):
        split_order(["A/character01"], 1, "paper", 0, 2)
