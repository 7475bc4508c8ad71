"""A finished run's files in storage: its trained initialization and its config.json.

Each attempt stores them under its own names (`runs/<run>/attempt-<n>/...`, see `run_files`),
and the run row is pointed at them in the same fenced UPDATE that marks the run succeeded, so
a reader following `Run.initialization` / `Run.config_file` never finds a half-written file, and
an attempt that lost its run (a worker that woke up after being paused) can replace nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.storage import default_storage
from django.db.models.fields.files import FieldFile
from django.http import FileResponse, Http404, HttpResponse, HttpResponseRedirect

from metatrain.checkpoint import (
    CONFIG_FILE,
    INITIALIZATION_FILE,
    load_checkpoint,
    save_initialization,
    write_json_atomic,
)
from webapp.version import code_version

from . import run_files
from .models import Run
from .presentation import round_fraction

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
    host (users download it, and a server path is nobody's business; the config hash does not
    depend on it), recording the code version that trained it."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    config = doc.get("config")
    if isinstance(config, dict) and config.get("data_dir") is not None:
        config["data_dir"] = None
    doc.setdefault("code_version", code_version())
    write_json_atomic(path, doc)


def initialization_from_checkpoint(checkpoint: Path, out_dir: Path) -> int:
    """Write initialization.safetensors + config.json (public) into `out_dir` from a
    training checkpoint's weights; returns the checkpoint's iteration. How a cancelled or
    failed run's trained weights become usable (download, "evaluate now")."""
    from metatrain import Config
    from metatrain.models import build_model

    state = load_checkpoint(checkpoint)
    config = Config.from_dict(state["config"])
    model = build_model(config)
    model.load_state_dict(state["model"], strict=True)
    save_initialization(model, config, out_dir)
    public_config(out_dir / CONFIG_FILE)
    return int(state["iteration"])


def download_name(run: Run, filename: str) -> str:
    """What a run's file is called on the user's disk: the run, its task and seed first
    (run-42-o5w1s-seed0-initialization.safetensors), so downloads of several runs never clash."""
    return f"run-{run.pk}-{task_slug(run)}-seed{run.seed}-{filename}"


_DATASET_LETTERS = {"omniglot": "o", "miniimagenet": "mi", "imagefolder": "if"}


def task_slug(run: Run) -> str:
    if run.dataset == "sine":
        return "sine"
    letters = _DATASET_LETTERS.get(run.dataset, run.dataset[:2])
    return f"{letters}{run.ways or ''}w{run.shots or ''}s"


def run_record(run: Run) -> dict[str, Any]:
    """What a downloaded config.json says about the run that made it (added at download time:
    the run id, its outcome and final results)."""
    return {
        "id": run.pk,
        "experiment_id": run.experiment_id,
        "seed": run.seed,
        "status": run.status,
        "iteration": run.checkpoint_iteration
        if run.status != Run.Status.SUCCEEDED
        else run.iteration,
        "total_iterations": run.total_iterations,
        "test_accuracy": round_fraction(run.test_accuracy),
        "test_ci95": round_fraction(run.test_ci95),
        "test_tasks": run.test_tasks,
        "test_loss_before": run.test_loss_before,
        "test_loss_after": run.test_loss_after,
    }


def config_download(run: Run, stored_config: bytes) -> bytes:
    """A stored config.json with the run's record added (`run_record`)."""
    doc = json.loads(stored_config.decode("utf-8"))
    doc["run"] = run_record(run)
    doc.setdefault("code_version", "unknown (trained before versions were recorded)")
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")


def checkpoint_weights(run: Run) -> dict[str, bytes]:
    """A cancelled or failed run's last checkpoint as {initialization.safetensors, config.json}
    bytes, extracted here on the web host from storage. FileNotFoundError without one."""
    if not run.checkpoint_file or not default_storage.exists(run.checkpoint_file.name):
        raise FileNotFoundError("this run has no stored checkpoint")
    with tempfile.TemporaryDirectory(prefix=f"run-{run.pk}-weights-") as tmp:
        folder = Path(tmp)
        run_files.download(run.checkpoint_file.name, folder / "checkpoint.pt")
        initialization_from_checkpoint(folder / "checkpoint.pt", folder)
        doc = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        doc["code_version"] = f"unknown (weights taken from a checkpoint by {code_version()})"
        return {
            INITIALIZATION_FILE: (folder / INITIALIZATION_FILE).read_bytes(),
            CONFIG_FILE: json.dumps(doc).encode("utf-8"),
        }


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
