"""Class-per-folder datasets (the Mini-ImageNet layout), on tiny generated trees."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metatrain.data import DataError, ImageFolderDataset, RotatedClassDataset, TaskSampler
from metatrain.data.imagefolder import EXPECTED_LAYOUT, clear_cache, load_imagefolder_splits

SIZE = 8
CLASSES = {"train": ["n001", "n002", "n003"], "val": ["n004", "n005"], "test": ["n006", "n007"]}


def pixels(split: str, cls: str, i: int) -> np.ndarray:
    """A reproducible random SIZE x SIZE RGB image per (split, class, index)."""
    seed = zlib.crc32(f"{split}/{cls}/{i}".encode())
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """DIR/{train,val,test}/CLASS/{0..3}.png (PNG: lossless, so pixels can be compared)."""
    root = tmp_path / "mini"
    for split, classes in CLASSES.items():
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(pixels(split, cls, i)).save(folder / f"img{i}.png")
    return root


def test_it_loads_the_three_split_folders(tree):
    s = load_imagefolder_splits(tree, SIZE)
    assert s.train.names == CLASSES["train"]
    assert s.validation.names == CLASSES["val"]
    assert s.test.names == CLASSES["test"]
    assert s.train.class_sizes().tolist() == [4, 4, 4]


def test_images_are_rgb_float_chw_with_the_files_pixels(tree):
    s = load_imagefolder_splits(tree, SIZE)
    x = s.test.images(1, [2, 0])
    assert x.shape == (2, 3, SIZE, SIZE) and x.dtype == torch.float32
    for got, i in zip(x, [2, 0], strict=True):
        expected = pixels("test", "n007", i).transpose(2, 0, 1).astype(np.float32) / 255
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-7)


def test_images_of_another_size_are_resized(tree):
    big = tree / "train" / "n001" / "img9.jpg"
    Image.fromarray(np.full((30, 50, 3), 200, dtype=np.uint8)).save(big)
    s = load_imagefolder_splits(tree, SIZE)
    index = s.train.files(0).index(big)
    x = s.train.images(0, [index])
    assert x.shape == (1, 3, SIZE, SIZE)
    assert torch.allclose(x, torch.full_like(x, 200 / 255), atol=3 / 255)  # JPEG is lossy


def test_greyscale_images_get_three_channels(tree):
    Image.fromarray(np.full((SIZE, SIZE), 77, dtype=np.uint8)).save(tree / "val/n004/grey.png")
    s = load_imagefolder_splits(tree, SIZE)
    index = [p.name for p in s.validation.files(0)].index("grey.png")
    x = s.validation.images(0, [index])
    assert x.shape == (1, 3, SIZE, SIZE) and torch.all(x == 77 / 255)


def test_images_are_decoded_lazily_then_kept_in_memory(tree):
    corrupt = tree / "train" / "n002" / "img0.png"
    corrupt.write_bytes(b"not a png")  # not touched by building the dataset
    s = load_imagefolder_splits(tree, SIZE)
    first = s.train.images(0, [0, 1])
    for path in (tree / "train" / "n001").iterdir():
        path.unlink()  # decoded images stay available without their files
    assert torch.equal(s.train.images(0, [0, 1]), first)
    with pytest.raises(DataError, match="cannot decode image") as err:
        s.train.images(1, [0])
    assert str(corrupt) in str(err.value)


def test_a_second_dataset_on_the_same_folder_shares_the_cache(tree):
    a = ImageFolderDataset.from_split_folder(tree / "test", SIZE)
    a.images(0, [0])
    (tree / "test" / "n006" / "img0.png").write_bytes(b"changed but cached")
    b = ImageFolderDataset.from_split_folder(tree / "test", SIZE)
    assert torch.equal(a.images(0, [0]), b.images(0, [0]))


def test_non_image_and_hidden_files_are_skipped(tree):
    (tree / "train" / "n001" / "notes.txt").write_text("not an image")
    (tree / "train" / "n001" / ".DS_Store").write_bytes(b"\0\0")
    (tree / "train" / "n001" / "sub").mkdir()
    (tree / "train" / "README.md").write_text("a file next to the class folders")
    s = load_imagefolder_splits(tree, SIZE)
    assert s.train.names == CLASSES["train"]
    assert [p.name for p in s.train.files(0)] == [f"img{i}.png" for i in range(4)]


def test_upper_case_extensions_count_as_images(tree):
    Image.fromarray(pixels("x", "y", 0)).save(tree / "test" / "n006" / "EXTRA.JPEG", "JPEG")
    s = load_imagefolder_splits(tree, SIZE)
    assert s.test.class_size(0) == 5


def test_it_rejects_a_class_folder_without_images(tree):
    empty = tree / "val" / "n005"
    for path in empty.iterdir():
        path.unlink()
    (empty / "notes.txt").write_text("only this")
    with pytest.raises(DataError, match="class folder has no image") as err:
        load_imagefolder_splits(tree, SIZE)
    assert str(empty) in str(err.value) and EXPECTED_LAYOUT in str(err.value)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_it_names_a_missing_split_folder(tree, split):
    folder = tree / split
    for path in sorted(folder.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    folder.rmdir()
    with pytest.raises(DataError, match="split folder is missing") as err:
        load_imagefolder_splits(tree, SIZE)
    assert str(folder) in str(err.value) and "DIR/val/CLASS" in str(err.value)


def test_it_rejects_a_split_folder_without_class_folders(tmp_path):
    for split in ("train", "val", "test"):
        (tmp_path / split).mkdir()
    Image.fromarray(pixels("a", "b", 0)).save(tmp_path / "train" / "loose.png")
    with pytest.raises(DataError, match="split folder has no class folder") as err:
        load_imagefolder_splits(tmp_path, SIZE)
    assert str(tmp_path / "train") in str(err.value)


def test_it_names_a_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist") as err:
        load_imagefolder_splits(tmp_path / "nope", SIZE)
    assert str(tmp_path / "nope") in str(err.value)


def test_data_dir_none_means_metatrain_data_miniimagenet(tree, monkeypatch):
    tree.rename(tree.parent / "miniimagenet")
    monkeypatch.setenv("METATRAIN_DATA", str(tree.parent))
    assert load_imagefolder_splits(None, SIZE).test.names == CLASSES["test"]
    monkeypatch.delenv("METATRAIN_DATA")
    with pytest.raises(DataError, match="METATRAIN_DATA"):
        load_imagefolder_splits(None, SIZE)


def test_rotation_augmentation_applies_to_train_only(tree):
    s = load_imagefolder_splits(tree, SIZE, augment_rotations=True)
    assert isinstance(s.train, RotatedClassDataset) and s.train.num_classes == 12
    assert s.validation.num_classes == 2 and s.test.num_classes == 2
    assert torch.equal(s.train.images(5, [3]), torch.rot90(s.train.images(4, [3]), 1, (-2, -1)))


def test_tasks_from_an_image_folder(tree):
    s = load_imagefolder_splits(tree, SIZE)
    task = TaskSampler(s.train, 3, 2, 2, np.random.default_rng(0)).sample()
    assert task.support_x.shape == (6, 3, SIZE, SIZE) and task.query_x.shape == (6, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="fewer than shots"):
        TaskSampler(s.train, 3, 4, 1, np.random.default_rng(0))
