"""The code version that runs here: recorded in every trained initialization's config.json so a
downloaded file says which code trained it."""

from __future__ import annotations

import functools
import os
import subprocess

from django.conf import settings


@functools.cache
def code_version() -> str:
    """CODE_VERSION from the environment (set by image builds), else the git commit of this
    checkout, else "unknown"."""
    version = os.environ.get("CODE_VERSION", "").strip()
    if version:
        return version
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=settings.BASE_DIR,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"
