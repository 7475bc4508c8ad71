"""A configuration's identity without its seed: the key that groups the seeds of one
configuration (the leaderboard's rows, a sweep's configurations).

`Run.config_hash` hashes the whole config, seed included, so two seeds of one configuration
never share it. `group_hash` hashes the same canonical JSON with the seed (and, as metatrain's
own hash does, `data_dir`: where the files lie, not what was trained) left out, plus an
uploaded dataset's content hash, so runs on different uploads never count as one configuration.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from metatrain import Config, ConfigError

# Not part of what a configuration is: the seed varies within a group, data_dir is per host.
_LEFT_OUT = ("seed", "data_dir")


def _canonical(config: Mapping[str, Any]) -> dict[str, Any]:
    """Every Config field (the library's defaults filling fields an old row lacks), or the
    stored values as they are when the library no longer accepts them."""
    try:
        values = Config.from_dict(dict(config)).to_dict()
    except (ConfigError, TypeError, ValueError):
        values = dict(config)
    return {k: v for k, v in values.items() if k not in _LEFT_OUT}


def group_hash(config: Mapping[str, Any], dataset_identity: str | None = None) -> str:
    """sha256 hex of the config without seed and data_dir; `dataset_identity` (an uploaded
    dataset's content hash, or `dataset-<id>` without one) is appended when there is one."""
    canonical = json.dumps(_canonical(config), sort_keys=True, separators=(",", ":"))
    if dataset_identity:
        canonical = f"{canonical}:{dataset_identity}"
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def dataset_identity(dataset) -> str | None:
    """What identifies an uploaded dataset's content (None: the installed data)."""
    if dataset is None:
        return None
    return dataset.content_hash or f"dataset-{dataset.pk}"
