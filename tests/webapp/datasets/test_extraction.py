"""safe_extract against the hostile corpus (every archive refused with its message, nothing
written anywhere), and against good archives (extracted, and loadable by metatrain)."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from pathlib import Path

import hostile_archives as ha
import numpy as np
import pytest

from metatrain.data import load_imagefolder_splits
from webapp.datasets.extraction import (
    MANIFEST_NAME,
    Budget,
    DatasetRejected,
    Limits,
    copy_limited,
    min_classes_for_split,
    safe_extract,
    split_classes,
)
from webapp.datasets.validation import validate_dataset


def extract(archive: Path, dest: Path, limits: Limits = ha.TEST_LIMITS, **kw):
    """What the worker does: extract, then validate the complete folder before it is moved."""
    return safe_extract(
        archive,
        dest,
        limits,
        check=lambda root, result: validate_dataset(root, layout=result.layout),
        **kw,
    )


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path]:
    archives, out = tmp_path / "archives", tmp_path / "out"
    archives.mkdir()
    out.mkdir()
    return archives, out


@pytest.mark.parametrize("name", list(ha.CASES))
def test_it_rejects_each_hostile_archive_with_its_message_and_writes_nothing(
    name, folders, tmp_path
):
    case = ha.CASES[name]
    archives, out = folders
    archive = case.build(archives)
    dest = out / "ds"
    before = ha.tree(tmp_path)

    with pytest.raises(DatasetRejected) as rejected:
        extract(archive, dest)

    assert rejected.value.code == case.code, rejected.value.message
    assert case.message in rejected.value.message
    assert str(tmp_path) not in rejected.value.message  # no server path shown to the user
    assert not dest.exists()
    assert ha.tree(tmp_path) == before  # no temporary folder left, nothing beside or above dest


def test_it_never_writes_an_absolute_member_to_its_absolute_path(folders):
    archives, out = folders
    target = Path(f"/tmp/metatrain-evil-{uuid.uuid4().hex}.png")
    with pytest.raises(DatasetRejected, match="absolute path"):
        extract(ha.absolute_path(archives, str(target)), out / "ds")
    assert not target.exists()


def test_it_rejects_an_archive_over_the_size_limit_before_reading_it(folders):
    archives, out = folders
    archive = ha.good_split_archive(archives)
    limits = Limits(max_archive_bytes=archive.stat().st_size - 1)
    with pytest.raises(DatasetRejected) as rejected:
        extract(archive, out / "ds", limits)
    assert rejected.value.code == "archive_too_large"
    assert list(out.iterdir()) == []


def test_it_rejects_a_member_over_the_per_file_limit(folders):
    archives, out = folders
    archive = ha.good_split_archive(archives)
    with pytest.raises(DatasetRejected) as rejected:
        extract(archive, out / "ds", Limits(max_file_bytes=200))
    assert rejected.value.code == "file_too_large"
    assert "per-file limit is 200 bytes" in rejected.value.message


def test_it_rejects_an_archive_over_the_total_limit(folders):
    archives, out = folders
    archive = ha.good_split_archive(archives)
    with pytest.raises(DatasetRejected) as rejected:
        extract(archive, out / "ds", Limits(max_total_bytes=5_000))
    assert rejected.value.code == "total_too_large"
    assert list(out.iterdir()) == []


def test_the_counting_reader_stops_at_the_limit_whatever_the_headers_said():
    """A stream longer than any header promised: the copy aborts soon after the limit."""
    limits = Limits(max_file_bytes=1024 * 1024)
    sink = io.BytesIO()
    with pytest.raises(DatasetRejected) as rejected:
        copy_limited(
            io.BytesIO(bytes(50 * 1024 * 1024)),
            sink,
            member="m.png",
            compressed_bytes=100 * 1024 * 1024,  # pretend: ratio below the limit
            budget=Budget(limits, archive_bytes=100 * 1024 * 1024),
        )
    assert rejected.value.code == "file_too_large"
    assert sink.tell() <= limits.max_file_bytes  # the chunk past the limit is never written


def test_the_counting_reader_stops_a_stream_that_outgrows_its_compressed_size():
    limits = Limits()
    with pytest.raises(DatasetRejected) as rejected:
        copy_limited(
            io.BytesIO(bytes(3 * 1024 * 1024)),
            io.BytesIO(),
            member="m.png",
            compressed_bytes=1000,
            budget=Budget(limits, archive_bytes=10 * 1024 * 1024),
        )
    assert rejected.value.code == "compression_ratio"


def test_it_extracts_a_train_val_test_archive_that_metatrain_loads(folders):
    archives, out = folders
    dest = out / "ds"
    result = extract(ha.good_split_archive(archives), dest)

    assert result.layout == "splits"
    assert result.images == 75
    assert {s: len(c) for s, c in result.classes.items()} == {"train": 5, "val": 5, "test": 5}
    assert result.check_result.images == 75
    assert [p.name for p in out.iterdir()] == ["ds"]  # the temporary folder is gone

    splits = load_imagefolder_splits(dest, image_size=8)
    assert splits.train.num_classes == splits.validation.num_classes == splits.test.num_classes == 5
    assert splits.test.class_sizes().tolist() == [5] * 5
    images = splits.train.gather(np.array([0, 4]), np.array([0, 4]))
    assert tuple(images.shape) == (2, 3, 8, 8)


def test_it_splits_plain_class_folders_64_16_20_with_a_recorded_seeded_shuffle(folders):
    archives, out = folders
    archive = ha.good_flat_archive(archives, classes=32)
    result = extract(archive, out / "a", split_seed=7)

    assert result.layout == "classes"
    split = result.class_split
    assert (split["seed"], split["proportions"]) == (7, {"train": 0.64, "val": 0.16, "test": 0.2})
    assert [len(split[s]) for s in ("train", "val", "test")] == [20, 5, 7]
    assert sorted(split["train"] + split["val"] + split["test"]) == [
        f"class{i:02d}" for i in range(32)
    ]
    for s in ("train", "val", "test"):
        assert sorted(p.name for p in (out / "a" / s).iterdir()) == split[s]
    manifest = json.loads((out / "a" / MANIFEST_NAME).read_text())
    assert manifest["class_split"] == split

    again = extract(archive, out / "b", split_seed=7)
    other = extract(archive, out / "c", split_seed=8)
    assert again.class_split == split
    assert other.class_split["val"] != split["val"]
    assert load_imagefolder_splits(out / "a", image_size=8).validation.num_classes == 5


def test_split_classes_ignores_listing_order_and_keeps_mini_imagenet_proportions():
    names = [f"n{i:03d}" for i in range(100)]
    split = split_classes(names, seed=0)
    assert [len(split[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert split_classes(list(reversed(names)), seed=0) == split
    assert min_classes_for_split(5) == 29


def test_it_strips_a_wrapper_folder_and_skips_desktop_litter(folders):
    archives, out = folders
    dest = out / "ds"
    result = extract(ha.good_wrapped_archive(archives), dest)

    assert result.layout == "splits"
    assert sorted(result.skipped) == [
        "__MACOSX/mydata/train/train-c0/._img0.png",
        "mydata/.DS_Store",
        "mydata/train/.DS_Store",
        "mydata/val/val-c0/Thumbs.db",
    ]
    assert sorted(p for p in ha.tree(dest) if p.count("/") < 1) == [
        MANIFEST_NAME,
        "test",
        "train",
        "val",
    ]
    assert not any(Path(p).name.startswith(".") or "Thumbs" in p for p in ha.tree(dest))


def test_it_refuses_to_overwrite_an_existing_destination(folders):
    archives, out = folders
    dest = out / "ds"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        extract(ha.good_split_archive(archives), dest)
    assert ha.tree(out) == ["ds", "ds/keep.txt"]


def test_a_failing_check_leaves_nothing_behind(folders):
    archives, out = folders

    def refuse(root, result):
        assert (root / "train").is_dir()  # the check sees the complete temporary folder
        raise DatasetRejected("custom", "no thanks")

    with pytest.raises(DatasetRejected, match="no thanks"):
        safe_extract(ha.good_split_archive(archives), out / "ds", check=refuse)
    assert list(out.iterdir()) == []


def test_it_accepts_every_supported_compression_method(folders):
    archives, out = folders
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        archive = ha.write_zip(archives / f"m{method}.zip", ha.split_entries(), method)
        assert extract(archive, out / f"ds{method}").images == 75
