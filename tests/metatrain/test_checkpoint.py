"""Checkpoints, initializations and config.json: atomic, weights-only, round trips."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from metatrain import Config, load_initialization, preset, save_initialization
from metatrain.checkpoint import (
    atomic_write,
    load_checkpoint,
    read_config,
    save_checkpoint,
    write_config,
)
from metatrain.engine.learner import Learner
from metatrain.models import build_from_architecture, build_model
from metatrain.seeding import numpy_state, set_numpy_state, train_rng


def _model(cfg: Config, seed: int = 0) -> torch.nn.Module:
    return build_model(cfg, torch.Generator().manual_seed(seed))


def test_atomic_write_replaces_whole_files_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write(target, lambda f: f.write(b"first"))
    assert target.read_bytes() == b"first"

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"first"  # the old content survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_checkpoint_round_trip(tmp_path):
    cfg = Config(image_size=8, ways=3)
    model = _model(cfg)
    learner = Learner.from_config(model, cfg)
    learner.step(torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2]))
    rng = train_rng(0)
    rng.random(5)
    gen = torch.Generator().manual_seed(7)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(
        path,
        iteration=42,
        config=cfg,
        model=model,
        optimizer=learner.optimizer,
        numpy_rng_state=numpy_state(rng),
        torch_rng_state=gen.get_state(),
    )
    ckpt = load_checkpoint(path)
    assert ckpt["iteration"] == 42
    assert ckpt["config_hash"] == cfg.config_hash()
    assert Config.from_dict(ckpt["config"]) == cfg
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items())

    other = _model(cfg, seed=1)
    other_learner = Learner.from_config(other, cfg)
    other.load_state_dict(ckpt["model"])
    other_learner.optimizer.load_state_dict(ckpt["optimizer"])
    for p, q in zip(learner.params, other_learner.params, strict=True):
        a, b = learner.optimizer.state[p], other_learner.optimizer.state[q]
        assert all(torch.equal(a[k], b[k]) for k in a)

    restored = train_rng(99)
    set_numpy_state(restored, ckpt["numpy_rng"])
    assert np.array_equal(restored.random(3), rng.random(3))
    regen = torch.Generator()
    regen.set_state(ckpt["torch_rng"])
    assert torch.equal(torch.rand(3, generator=regen), torch.rand(3, generator=gen))
    json.dumps(ckpt["numpy_rng"])  # the numpy state is stored as plain JSON data


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_checkpoints_are_loaded_without_unpickling_code(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format_version": 1, "payload": _Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)


def test_save_and_load_initialization_round_trip(tmp_path):
    cfg = Config(ways=5)
    model = _model(cfg, seed=3)
    path = save_initialization(model, cfg, tmp_path)
    assert path.endswith("initialization.safetensors")
    for source in (tmp_path, path):
        loaded = load_initialization(source)
        for (k, a), (k2, b) in zip(
            model.state_dict().items(), loaded.state_dict().items(), strict=True
        ):
            assert k == k2 and torch.equal(a, b)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), load_initialization(tmp_path)(x))


def test_config_json_documents_architecture_and_preprocessing(tmp_path):
    cfg = preset("omniglot-20way-1shot")
    write_config(cfg, tmp_path)
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["format_version"] == 1
    assert doc["config_hash"] == cfg.config_hash()
    assert doc["config"] == cfg.to_dict()
    assert doc["architecture"] == {**doc["architecture"], "name": "omniglot_conv", "ways": 20}
    assert doc["architecture"]["in_channels"] == 1 and doc["architecture"]["image_size"] == 28
    assert doc["preprocessing"]["input_shape"] == [1, 28, 28]
    assert read_config(tmp_path) == cfg


def test_an_initialization_loads_with_only_safetensors_and_the_architecture(tmp_path):
    """What the README shows: no metatrain import needed to get the tensors."""
    cfg = preset("sine")
    model = _model(cfg)
    save_initialization(model, cfg, tmp_path)
    tensors = load_file(str(tmp_path / "initialization.safetensors"))
    assert sorted(tensors) == sorted(
        ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]
    )
    arch = json.loads((tmp_path / "config.json").read_text())["architecture"]
    rebuilt = torch.nn.Sequential(
        torch.nn.Linear(1, arch["hidden"]),
        torch.nn.Tanh(),
        torch.nn.Linear(arch["hidden"], arch["hidden"]),
        torch.nn.Tanh(),
        torch.nn.Linear(arch["hidden"], 1),
    )
    rebuilt.load_state_dict(
        {
            f"{i}.{kind}": tensors[f"fc{n}.{kind}"]
            for n, i in ((1, 0), (2, 2), (3, 4))
            for kind in ("weight", "bias")
        }
    )
    x = torch.linspace(-5, 5, 7)[:, None]
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    assert isinstance(build_from_architecture(arch), torch.nn.Module)


def test_a_config_json_written_before_the_version_fields_reads_as_version_1(tmp_path):
    old = preset("omniglot-5way-1shot", split_version=1, sine_version=1)
    write_config(old, tmp_path)
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["config_hash"] == old.config_hash()
    for field in ("split_version", "sine_version"):
        del doc["config"][field]  # as such a run wrote it
    (tmp_path / "config.json").write_text(json.dumps(doc))
    read = read_config(tmp_path)
    assert (read.split_version, read.sine_version) == (1, 1)
    assert read == old and read.hash_matches(doc["config_hash"])
    assert not preset("omniglot-5way-1shot").hash_matches(doc["config_hash"])
