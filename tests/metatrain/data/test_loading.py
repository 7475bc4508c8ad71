"""load_class_splits: dispatch on config.dataset, attribute access only."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from metatrain.data import DataError, RotatedClassDataset, TensorClassDataset, load_class_splits


def counts(splits) -> tuple[int, int, int]:
    return (splits.train.num_classes, splits.validation.num_classes, splits.test.num_classes)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, (4800, 0, 423)),
        ({"augment_rotations": False}, (1200, 0, 423)),
        ({"validation_classes": 50}, (4600, 50, 423)),
        ({"split": "lake"}, (3856, 0, 659)),
        ({"split": "lake", "validation_classes": 100, "augment_rotations": False}, (864, 100, 659)),
    ],
)
def test_omniglot_split_counts_on_the_real_data(config_factory, omniglot_dir, overrides, expected):
    splits = load_class_splits(config_factory(data_dir=str(omniglot_dir), **overrides))
    assert counts(splits) == expected


def test_omniglot_defaults_to_metatrain_data(config_factory, omniglot_dir, monkeypatch):
    monkeypatch.setenv("METATRAIN_DATA", str(omniglot_dir.parent))
    splits = load_class_splits(config_factory(data_dir=None))
    assert isinstance(splits.train, RotatedClassDataset)
    assert isinstance(splits.test, TensorClassDataset)
    assert splits.test.image_shape == (1, 28, 28)


def test_omniglot_image_size_and_split_seed_are_used(config_factory, omniglot_dir):
    a = load_class_splits(config_factory(data_dir=str(omniglot_dir), split_seed=1))
    b = load_class_splits(config_factory(data_dir=str(omniglot_dir), split_seed=2, image_size=14))
    assert a.test.names != b.test.names
    assert b.test.images(0, [0]).shape == (1, 1, 14, 14)


def test_a_missing_omniglot_folder_is_a_data_error(config_factory, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_class_splits(config_factory(data_dir=str(tmp_path / "none")))


def test_imagefolder_dispatch(config_factory, tmp_path):
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        for c in range(n):
            folder = tmp_path / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.zeros((84, 84, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    config = config_factory(
        dataset="imagefolder", data_dir=str(tmp_path), image_size=84, augment_rotations=False
    )
    splits = load_class_splits(config)
    assert counts(splits) == (3, 1, 2)
    assert splits.train.image_shape == (3, 84, 84)
    rotated = load_class_splits(config_factory(**{**vars(config), "augment_rotations": True}))
    assert counts(rotated) == (12, 1, 2)


def test_sine_has_no_class_splits(config_factory):
    with pytest.raises(ValueError, match="SineTaskSampler"):
        load_class_splits(config_factory(dataset="sine"))


def test_unknown_dataset(config_factory):
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_class_splits(config_factory(dataset="cifar"))
