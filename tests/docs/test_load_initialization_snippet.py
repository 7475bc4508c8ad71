"""The README's torch-only loader must rebuild exactly the network metatrain trained."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch

from metatrain import load_initialization, preset
from metatrain.checkpoint import save_initialization
from metatrain.models import build_model

SNIPPET = Path(__file__).resolve().parents[2] / "docs" / "load_initialization.py"


@pytest.mark.parametrize(
    ("preset_name", "input_shape"),
    [
        ("omniglot-5way-1shot", (7, 1, 28, 28)),
        ("miniimagenet-5way-1shot", (6, 3, 84, 84)),
        ("sine", (9, 1)),
    ],
)
def test_the_snippet_rebuilds_the_same_network(tmp_path, monkeypatch, preset_name, input_shape):
    config = preset(preset_name)
    model = build_model(config)
    save_initialization(model, config, tmp_path)
    monkeypatch.chdir(tmp_path)

    standalone = runpy.run_path(str(SNIPPET))["model"]
    reference = load_initialization(tmp_path)

    x = torch.rand(input_shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(standalone(x), reference(x))
    assert set(standalone.state_dict()) == set(reference.state_dict())


def test_the_readme_shows_the_tested_snippet():
    readme = (SNIPPET.parents[1] / "README.md").read_text()
    assert SNIPPET.read_text() in readme
