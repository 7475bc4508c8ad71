"""Everything a run writes to disk, written atomically, read without unpickling code.

- ``config.json``: the config plus ``format_version``, ``config_hash``, ``architecture`` (enough
  to rebuild the network) and ``preprocessing`` (what the network expects as input).
- ``checkpoint.pt``: meta-weights, inner optimizer state, iteration, RNG states, config hash;
  loaded only with ``torch.load(weights_only=True)``.
- ``initialization.safetensors``: the trained meta-weights only (no pickle).

Every file is written to a temporary file in the same folder and renamed over the target
(``os.replace``), so a crash never leaves a half-written file where a reader expects a whole one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import Config
from .models import architecture, build_from_architecture

__all__ = [
    "FORMAT_VERSION",
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "INITIALIZATION_FILE",
    "METRICS_FILE",
    "atomic_write",
    "write_json_atomic",
    "config_document",
    "preprocessing",
    "write_config",
    "read_config",
    "read_document",
    "save_checkpoint",
    "load_checkpoint",
    "save_initialization",
    "load_initialization",
]

FORMAT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"
INITIALIZATION_FILE = "initialization.safetensors"
METRICS_FILE = "metrics.jsonl"


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` through ``write(file)`` into a temp file, fsync it, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    data = (json.dumps(obj, indent=2) + "\n").encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def preprocessing(config: Config) -> dict[str, Any]:
    """What the network's input must look like (recorded in config.json for users)."""
    s = config.image_size
    if config.dataset == "omniglot":
        return {
            "input_shape": [1, s, s],
            "dtype": "float32",
            "layout": "NCHW",
            "value_range": [0.0, 1.0],
            "description": f"grayscale Omniglot drawing resized from 105x105 to {s}x{s} with "
            "nearest neighbour (Pillow), binary: 1.0 = white background, 0.0 = ink "
            "(as the paper's code)",
        }
    if config.dataset == "imagefolder":
        return {
            "input_shape": [3, s, s],
            "dtype": "float32",
            "layout": "NCHW",
            "value_range": [0.0, 1.0],
            "description": f"RGB image resized to {s}x{s} (bicubic, if not already that size), "
            "pixel values / 255",
        }
    return {
        "input_shape": [1],
        "dtype": "float32",
        "description": "x in [-5, 5] as a column (n, 1); the output is y = a*sin(x + b)",
    }


def config_document(config: Config) -> dict[str, Any]:
    """The content of config.json."""
    return {
        "format_version": FORMAT_VERSION,
        "config_hash": config.config_hash(),
        "config": config.to_dict(),
        "architecture": architecture(config),
        "preprocessing": preprocessing(config),
    }


def write_config(config: Config, out_dir: str | os.PathLike[str]) -> str:
    path = Path(out_dir) / CONFIG_FILE
    write_json_atomic(path, config_document(config))
    return str(path)


def read_document(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed config.json of a run folder (or that file), its format version checked."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    with open(path, encoding="utf-8") as f:
        doc: dict[str, Any] = json.load(f)
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: unsupported format_version {version!r} (expected {FORMAT_VERSION})"
        )
    return doc


def read_config(path: str | os.PathLike[str]) -> Config:
    """The Config stored in a run folder's config.json (or that file itself)."""
    return Config.from_dict(read_document(path)["config"])


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    iteration: int,
    config: Config,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    numpy_rng_state: dict[str, Any],
    torch_rng_state: torch.Tensor | None = None,
) -> None:
    """Everything needed to continue training bit-identically from ``iteration``."""
    state = {
        "format_version": FORMAT_VERSION,
        "iteration": int(iteration),
        "config_hash": config.config_hash(),
        "config": json.dumps(config.to_dict(), sort_keys=True),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "numpy_rng": json.dumps(numpy_rng_state),
        "torch_rng": torch_rng_state
        if torch_rng_state is not None
        else torch.empty(0, dtype=torch.uint8),
    }
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint as a dict (tensors on CPU); ``numpy_rng`` decoded back into a dict."""
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint format_version {version!r}")
    state["numpy_rng"] = json.loads(state["numpy_rng"])
    state["config"] = json.loads(state["config"])
    return state


def save_initialization(model: nn.Module, config: Config, out_dir: str | os.PathLike[str]) -> str:
    """Write ``initialization.safetensors`` (weights only) and ``config.json`` into ``out_dir``.

    Returns the path of the .safetensors file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format_version": str(FORMAT_VERSION),
        "config_hash": config.config_hash(),
        "architecture": json.dumps(architecture(config), sort_keys=True),
    }
    target = out / INITIALIZATION_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=out)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    write_config(config, out)
    return str(target)


def _initialization_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    path = Path(path)
    if path.is_dir():
        return path / INITIALIZATION_FILE, path / CONFIG_FILE
    return path, path.parent / CONFIG_FILE


def load_initialization(path: str | os.PathLike[str]) -> nn.Module:
    """The trained network from a run folder or its ``initialization.safetensors``.

    The architecture comes from the config.json next to the weights. Batch norm uses batch
    statistics in every mode, so the module behaves the same in train() and eval().
    """
    weights, config_path = _initialization_paths(path)
    doc = read_document(config_path)
    model = build_from_architecture(doc["architecture"])
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model
