"""A finished run's files in storage: its trained initialization and its config.json.

Each attempt stores them under its own names (`runs/<run>/attempt-<n>/...`, see `run_files`),
and the run row is pointed at them in the same fenced UPDATE that marks the run succeeded, so
a reader following `Run.initialization` / `Run.config_file` never finds a half-written file, and
an attempt that lost its run (a worker that woke up after being paused) can replace nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.db.models.fields.files import FieldFile
from django.http import FileResponse, Http404, HttpResponse, HttpResponseRedirect

from metatrain.checkpoint import CONFIG_FILE, INITIALIZATION_FILE, write_json_atomic

from . import run_files
from .models import Run

# Run fields -> the file each one stores.
ARTIFACTS = {"initialization": INITIALIZATION_FILE, "config_file": CONFIG_FILE}


def store_artifacts(run: Run, attempt: int, out_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Upload a trained attempt's initialization and config from its work folder; returns the
    stored names per Run field, for `lifecycle.complete_run` to record. Raises
    FileNotFoundError if training did not write them."""
    out = Path(out_dir)
    sources = {field: out / filename for field, filename in ARTIFACTS.items()}
    for path in sources.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path.name} is missing: training did not finish writing it")
    public_config(sources["config_file"])
    return {
        field: run_files.upload(path, run_files.artifact_name(run.pk, attempt, path.name))
        for field, path in sources.items()
    }


def public_config(path: Path) -> None:
    """Rewrite a run's config.json without the folder its data was read from on this worker
    host: users download it, and a server path is nobody's business (the config hash does not
    depend on it)."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    config = doc.get("config")
    if isinstance(config, dict) and config.get("data_dir") is not None:
        config["data_dir"] = None
        write_json_atomic(path, doc)


def download_response(file: FieldFile, filename: str, content_type: str) -> HttpResponse:
    """A stored file as a download: streamed through this process, or, with
    STORAGE_REDIRECT_DOWNLOADS on an object store, a redirect to a short-lived signed URL that
    names the same file. Http404 when the file is missing from storage."""
    if not file or not default_storage.exists(file.name):
        raise Http404("The file is missing from storage.")
    if settings.STORAGE_REDIRECT_DOWNLOADS and settings.STORAGE_BACKEND == "s3":
        url = file.storage.url(
            file.name,
            parameters={
                "ResponseContentDisposition": f'attachment; filename="{filename}"',
                "ResponseContentType": content_type,
            },
        )
        return HttpResponseRedirect(url)
    try:
        handle = file.open("rb")
    except FileNotFoundError:
        raise Http404("The file is missing from storage.") from None
    return FileResponse(handle, as_attachment=True, filename=filename, content_type=content_type)
