"""`manage.py run_worker`: one worker per GPU, pinned and named after host and GPU, holding one
run or several; clear errors for options that cannot work. `--dry-run` prints what it would
start; one test starts a real CPU worker through it."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from webapp.experiments.management.commands.run_worker import worker_command


def test_a_gpu_worker_is_pinned_named_after_host_and_gpu_and_holds_k_runs():
    argv, env = worker_command(gpu=1, runs_per_gpu=4, queues=None, host="box", gpus_here=2)
    assert env == {
        "CUDA_VISIBLE_DEVICES": "1",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "METATRAIN_WORKER_GPU": "1",
    }
    assert argv[argv.index("-n") + 1] == "train-gpu1@box"
    assert argv[argv.index("--concurrency") + 1] == "4"
    assert argv[argv.index("-Q") + 1] == "gpu,any"
    assert "--disable-prefetch" in argv  # each process fetches only when idle


def test_a_cpu_worker_serves_the_cpu_queues_one_run_at_a_time():
    argv, env = worker_command(gpu=None, runs_per_gpu=1, queues=["cpu", "any"], host="box")
    assert env == {}
    assert argv[argv.index("-n") + 1] == "train-cpu@box"
    assert argv[argv.index("--concurrency") + 1] == "1"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gpu": 2, "gpus_here": 2}, "--gpu 2: this host has 2 GPUs (0 to 1)"),
        ({"gpu": 0, "gpus_here": 0}, "--gpu 0: this host has 0 GPUs"),
        ({"gpu": -1, "gpus_here": 1}, "--gpu must be a GPU index"),
        ({"gpu": 0, "gpus_here": 1, "runs_per_gpu": 0}, "--runs-per-gpu must be 1 or more"),
        ({"gpu": None, "runs_per_gpu": 2}, "--runs-per-gpu needs --gpu"),
        ({"gpu": None, "queues": ["gpu", "fast"]}, "unknown queue(s) ['fast']"),
    ],
)
def test_options_that_cannot_work_are_refused_saying_why(options, message):
    kwargs = {"gpu": None, "runs_per_gpu": 1, "queues": None, "host": "box", **options}
    with pytest.raises(CommandError) as err:
        worker_command(**kwargs)
    assert message in str(err.value)


def test_runs_per_gpu_from_the_environment_applies_to_gpu_workers_only(monkeypatch):
    monkeypatch.setenv("RUNS_PER_GPU", "4")
    out = io.StringIO()
    call_command("run_worker", "--queues", "cpu,any", "--hostname", "box", "--dry-run", stdout=out)
    assert "--concurrency 1 " in out.getvalue()


def test_on_a_host_without_gpus_the_command_says_so(monkeypatch):
    import torch

    if torch.cuda.device_count():
        pytest.skip("this host has a GPU")  # the refusal is what is tested here
    with pytest.raises(CommandError, match="--gpu 0: this host has 0 GPUs"):
        call_command("run_worker", "--gpu", "0", "--dry-run")
