"""Several hosts that share nothing but PostgreSQL, Redis and an S3 bucket: two real worker
processes whose local folders (RUNS_ROOT, DATASET_CACHE_ROOT, MEDIA_ROOT) differ, an S3 API
server on loopback (moto's; the only stand-in), and this process as the web host.

- A run whose worker is SIGKILLed after its first uploaded checkpoint resumes on the other
  host from that checkpoint, every metric point exactly once, and its initialization downloads
  from the web host.
- A dataset uploaded to the web host trains on a worker host whose cache is empty.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import pytest
from django.core.files import File
from django.core.files.storage import default_storage
from django.urls import reverse
from safetensors.torch import load

import metatrain
from metatrain.models import build_model
from webapp.datasets.models import UserDataset
from webapp.datasets.processing import process_dataset
from webapp.experiments import run_files, services
from webapp.experiments.models import Evaluation, MetricPoint, Run, RunAttempt
from webapp.experiments.tasks import supervise_runs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FINAL = {Run.Status.SUCCEEDED, Run.Status.FAILED, Run.Status.CANCELLED}


def _host_env(tmp_path, name: str, s3_env: dict[str, str]) -> dict[str, str]:
    """A worker host's environment: the shared bucket, and folders of its own."""
    root = tmp_path / name
    return {
        **s3_env,
        "RUNS_ROOT": str(root / "runs"),
        "DATASET_CACHE_ROOT": str(root / "dataset-cache"),
        "MEDIA_ROOT": str(root / "media"),
        "DATASETS_ROOT": str(root / "datasets"),
    }


def _hostile_archives():
    """The dataset tests' archive generator (its conftest registers it only for those tests)."""
    if "hostile_archives" not in sys.modules:
        path = Path(__file__).parents[1] / "webapp" / "datasets" / "hostile_archives.py"
        spec = importlib.util.spec_from_file_location("hostile_archives", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["hostile_archives"] = module
        spec.loader.exec_module(module)
    return sys.modules["hostile_archives"]


def _steps(run: Run, name: str) -> list[int]:
    return list(
        MetricPoint.objects.filter(run=run, name=name)
        .order_by("step")
        .values_list("step", flat=True)
    )


def test_a_run_lost_on_host_a_resumes_on_host_b_from_its_uploaded_checkpoint(
    owner, start_worker, s3_storage, wait_for, wait_for_run, settings, tmp_path, client
):
    settings.RUN_LOST_AFTER_SECONDS = 3
    host_a = start_worker(name="host-a", env=_host_env(tmp_path, "host-a", s3_storage))
    config = metatrain.preset(
        "sine",
        meta_iters=300,
        checkpoint_interval=20,
        validation_interval=50,
        validation_tasks=4,
        final_eval_tasks=8,
    ).to_dict()
    config.pop("seed")
    run = services.create_experiment(owner, name="fleet", config=config, seeds=[0]).runs.get()

    def uploaded():
        current = Run.objects.get(pk=run.pk)
        return current if current.checkpoint_file else None

    first = wait_for(uploaded, 120, "the first uploaded checkpoint", worker=host_a)
    host_a.kill()
    assert first.checkpoint_file.name.startswith(f"runs/{run.pk}/checkpoints/attempt-1-iter-")
    assert wait_for(lambda: supervise_runs()["lost"], 30, "the supervisor to notice") == [run.pk]
    run.refresh_from_db()
    resume_at = run.checkpoint_iteration
    assert resume_at >= 20 and run.status == Run.Status.QUEUED
    # The checkpoint is in the bucket, not on a disk host B can see.
    assert default_storage.exists(run.checkpoint_file.name)
    assert not (tmp_path / "host-b").exists()

    host_b = start_worker(name="host-b", env=_host_env(tmp_path, "host-b", s3_storage))
    run = wait_for_run(run.pk, FINAL, timeout=300, worker=host_b)
    assert run.status == Run.Status.SUCCEEDED, run.status_reason

    attempts = list(
        RunAttempt.objects.filter(run=run).values_list("worker", "start_iteration", "outcome")
    )
    assert attempts == [
        (host_a.hostname, 0, "lost"),
        (host_b.hostname, resume_at, Run.Status.SUCCEEDED),
    ]
    # No metric point lost or duplicated across the hosts.
    assert _steps(run, "inner_loss") == list(range(1, 301))
    assert MetricPoint.objects.filter(run=run, name="inner_loss").count() == 300
    assert list(
        Evaluation.objects.filter(run=run, kind="validation")
        .order_by("iteration")
        .values_list("iteration", flat=True)
    ) == list(range(50, 301, 50))

    # The web host serves the initialization host B stored.
    assert run.initialization.name == f"runs/{run.pk}/attempt-2/initialization.safetensors"
    client.force_login(owner)
    response = client.get(reverse("run-download", args=[run.pk, "initialization.safetensors"]))
    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    with default_storage.open(run.initialization.name) as fh:
        assert body == fh.read()
    expected = build_model(metatrain.Config.from_dict(run.config)).state_dict()
    assert set(load(body)) == set(expected)
    # Nothing is kept that nobody can use: checkpoints went with success, B cleaned its folder.
    assert sorted(run_files.stored_files(run.pk)) == sorted(
        [run.initialization.name, run.config_file.name]
    )
    assert not (tmp_path / "host-b" / "runs" / str(run.pk) / "attempt-2").exists()


def test_a_dataset_uploaded_to_the_web_host_trains_on_a_worker_with_an_empty_cache(
    owner, start_worker, s3_storage, wait_for_run, settings, tmp_path
):
    ha = _hostile_archives()
    # The web host (this process) stores the upload; its dataset worker checks it.
    settings.DATASET_CACHE_ROOT = tmp_path / "web" / "dataset-cache"
    archives = tmp_path / "archives"
    archives.mkdir()
    upload = ha.good_split_archive(archives)
    dataset = UserDataset(owner=owner, name="tiny", upload_name=upload.name)
    with upload.open("rb") as fh:
        dataset.upload.save(upload.name, File(fh), save=True)
    assert process_dataset(dataset.pk) == "ready"
    dataset.refresh_from_db()
    with default_storage.open(dataset.archive.name) as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == dataset.content_hash

    worker_env = _host_env(tmp_path, "gpu-host", s3_storage)
    worker = start_worker(name="gpu-host", env=worker_env)
    config = {
        "dataset": "imagefolder",
        "model": "omniglot_conv",
        "image_size": 28,
        "augment_rotations": False,
        "ways": 3,
        "shots": 1,
        "train_shots": 3,
        "inner_iters": 2,
        "eval_inner_iters": 3,
        "meta_iters": 4,
        "checkpoint_interval": 2,
        "final_eval_tasks": 5,
        "validation_interval": 0,
    }
    experiment = services.create_experiment(
        owner, name="on upload", config=config, seeds=[0], user_dataset=dataset.pk
    )
    run = wait_for_run(experiment.runs.get().pk, FINAL, timeout=240, worker=worker)
    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    # The worker host fetched the archive into its own cache, named by content.
    cached = tmp_path / "gpu-host" / "dataset-cache" / dataset.content_hash
    assert sorted(p.name for p in cached.iterdir()) == ["dataset.json", "test", "train", "val"]
    assert run.test_tasks == 5
