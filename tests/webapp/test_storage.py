"""Whole files to and from the default storage (webapp/storage.py)."""

from __future__ import annotations

import pytest
from django.core.files.storage import default_storage

from webapp import storage


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def test_an_upload_replaces_the_same_name_and_a_download_brings_it_back(tmp_path):
    source = tmp_path / "a.bin"
    source.write_bytes(b"first")
    assert storage.upload(source, "runs/1/a.bin") == "runs/1/a.bin"
    source.write_bytes(b"second")
    assert storage.upload(source, "runs/1/a.bin") == "runs/1/a.bin"  # no a_XXXX.bin beside it
    assert default_storage.listdir("runs/1") == ([], ["a.bin"])

    dest = storage.download("runs/1/a.bin", tmp_path / "here" / "a.bin")
    assert dest.read_bytes() == b"second"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["a.bin"]  # no temporary left


def test_downloading_a_missing_file_raises_and_leaves_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        storage.download("runs/9/none.bin", tmp_path / "here" / "none.bin")
    assert list((tmp_path / "here").iterdir()) == []
