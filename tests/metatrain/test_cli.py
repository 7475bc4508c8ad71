"""The command line: exit codes, one-line errors, presets, train / resume / evaluate on sine.

Most tests call ``cli.main([...])`` in-process (fast); a few run ``python -m metatrain`` as a
subprocess to check the real entry point, stdout/stderr separation and Ctrl-C.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metatrain import PRESETS, cli
from metatrain.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
SINE = ["--preset", "sine", "--set", "checkpoint_interval=2", "--set", "validation_interval=3"]
SINE += ["--set", "validation_tasks=2"]


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def assert_usage_error(code: int, out: str, err: str, *fragments: str) -> None:
    """Exit 2, nothing on stdout, exactly one line on stderr (no traceback) naming the problem."""
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def train_sine(run_dir: Path, iterations: int = 6, *extra: str) -> tuple[int, str, str]:
    return run("train", *SINE, "--iterations", str(iterations), *extra, "--out", str(run_dir))


def metric_iterations(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["iteration"] for line in lines if "inner_loss" in json.loads(line)]


# --- presets --------------------------------------------------------------------------------


def test_presets_prints_a_table_naming_every_preset():
    code, out, err = run("presets")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()[2:] if line.strip()]
    assert set(PRESETS) <= set(names)
    header = out.splitlines()[0]
    for column in ("ways", "shots", "inner", "meta batch", "meta iters"):
        assert column in header


def test_presets_json_is_every_field_of_every_preset():
    code, out, _ = run("presets", "--json")
    assert code == 0
    assert json.loads(out) == PRESETS


# --- bad arguments ----------------------------------------------------------------------------


def test_it_rejects_an_unknown_preset(tmp_path):
    code, out, err = run("train", "--preset", "nope", "--out", str(tmp_path / "r"))
    assert_usage_error(code, out, err, "unknown preset 'nope'", "sine")
    assert not (tmp_path / "r").exists()


def test_it_rejects_a_non_integer_iteration_count(tmp_path):
    code, out, err = run("train", "--preset", "sine", "--iterations", "ten", "--out", str(tmp_path))
    assert_usage_error(code, out, err, "--iterations", "'ten'")


@pytest.mark.parametrize("value", ["0", "-3"])
def test_it_rejects_a_non_positive_task_count(tmp_path, value):
    code, out, err = run("evaluate", str(tmp_path), "--tasks", value)
    assert_usage_error(code, out, err, "--tasks", value)


def test_it_rejects_an_unknown_command():
    assert_usage_error(*run("fly"), "invalid choice")


def test_it_rejects_an_unknown_config_field_naming_it(tmp_path):
    code, out, err = run("train", "--preset", "sine", "--set", "colour=1", "--out", str(tmp_path))
    assert_usage_error(code, out, err, "colour: unknown field")


def test_it_rejects_a_set_value_of_the_wrong_type_naming_the_field(tmp_path):
    code, out, err = run("train", "--preset", "sine", "--set", "inner_lr=fast", "--out", "x")
    assert_usage_error(code, out, err, "inner_lr", "'fast'")


def test_it_rejects_a_set_without_equals_sign(tmp_path):
    code, out, err = run("train", "--preset", "sine", "--set", "inner_lr", "--out", str(tmp_path))
    assert_usage_error(code, out, err, "key=value")


def test_it_rejects_a_missing_run_dir(tmp_path):
    code, out, err = run("evaluate", str(tmp_path / "missing"))
    assert_usage_error(code, out, err, "does not exist")


def test_it_rejects_a_folder_that_is_not_a_run(tmp_path):
    assert_usage_error(*run("evaluate", str(tmp_path)), "config.json")


def test_it_rejects_a_run_dir_without_an_initialization(tmp_path):
    run_dir = tmp_path / "r"
    assert train_sine(run_dir, 4)[0] == 0
    (run_dir / "initialization.safetensors").unlink()
    code, out, err = run("evaluate", str(run_dir))
    assert_usage_error(code, out, err, "initialization.safetensors", "iteration 4/4")


def test_it_rejects_a_missing_data_folder_with_the_data_error(tmp_path):
    missing = tmp_path / "no-omniglot"
    run_dir = tmp_path / "r"
    code, out, err = run(
        "train",
        "--preset",
        "omniglot-5way-1shot",
        "--data-dir",
        str(missing),
        "--out",
        str(run_dir),
    )
    assert_usage_error(code, out, err, "Omniglot folder does not exist", str(missing), "Expected")
    assert not run_dir.exists()  # no empty run folder left behind


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_it_rejects_cuda_without_cuda(tmp_path):
    code, out, err = run("train", "--preset", "sine", "--device", "cuda", "--out", str(tmp_path))
    assert_usage_error(code, out, err, "CUDA is not available")


def test_sine_rejects_classification_only_options(tmp_path):
    run_dir = tmp_path / "r"
    assert train_sine(run_dir, 2)[0] == 0
    assert_usage_error(*run("evaluate", str(run_dir), "--ways", "3"), "--ways", "sine")


def test_help_exits_zero(capsys):
    assert cli.main(["train", "--help"]) == 0
    assert "--preset" in capsys.readouterr().out


# --- --set ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("1e-3", 0.001),
        ("0.5", 0.5),
        ("true", True),
        ("false", False),
        ("null", None),
        ("fomaml", "fomaml"),
        ('"42"', "42"),
        ("/data/omniglot", "/data/omniglot"),
    ],
)
def test_set_values_are_json_when_they_parse_else_strings(text, value):
    parsed = cli.parse_set_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_train_applies_set_iterations_and_seed_to_the_config(tmp_path):
    run_dir = tmp_path / "r"
    code, _, err = run(
        "train",
        "--preset",
        "sine",
        "--set",
        "meta_step=0.5",
        "--set",
        "algorithm=fomaml",
        "--set",
        "transductive=false",
        "--iterations",
        "3",
        "--seed",
        "7",
        "--out",
        str(run_dir),
    )
    assert code == 0, err
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["meta_step"] == 0.5
    assert config["algorithm"] == "fomaml"
    assert config["transductive"] is False
    assert (config["meta_iters"], config["seed"]) == (3, 7)
    assert config["inner_lr"] == PRESETS["sine"]["inner_lr"]  # untouched fields keep the preset


# --- train, resume, evaluate ------------------------------------------------------------------


def test_train_writes_the_run_files_and_shows_progress(tmp_path):
    run_dir = tmp_path / "r"
    code, out, err = train_sine(run_dir, 6)
    assert code == 0, err
    for name in ("initialization.safetensors", "config.json", "metrics.jsonl", "checkpoint.pt"):
        assert (run_dir / name).is_file(), name
    assert metric_iterations(run_dir) == [1, 2, 3, 4, 5, 6]
    assert out == ""
    assert "6/6" in err and "ETA" in err
    assert f"evaluate {run_dir}" in err


def test_training_a_finished_run_again_does_nothing(tmp_path):
    run_dir = tmp_path / "r"
    assert train_sine(run_dir, 4)[0] == 0
    before = (run_dir / "initialization.safetensors").stat().st_mtime_ns
    code, _, err = train_sine(run_dir, 4)
    assert code == 0
    assert "nothing to do" in err
    assert (run_dir / "initialization.safetensors").stat().st_mtime_ns == before


def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    run_dir = tmp_path / "r"
    assert train_sine(run_dir, 4)[0] == 0
    code, out, err = train_sine(run_dir, 5)
    assert_usage_error(code, out, err, "different config", "meta_iters 4 -> 5")
    assert int(load_checkpoint(run_dir / "checkpoint.pt")["iteration"]) == 4  # untouched


class _CtrlCAt(cli._TrainReporter):
    """Presses Ctrl-C (a real SIGINT to this process) after meta-iteration ``at``."""

    at = 3
    signum = signal.SIGINT

    def on_iteration(self, iteration, metrics):
        super().on_iteration(iteration, metrics)
        if iteration == self.at:
            signal.raise_signal(self.signum)


class _SigtermAt(_CtrlCAt):
    """Sends this process SIGTERM (timeout, docker stop, a scheduler's time limit)."""

    signum = signal.SIGTERM


def test_sigterm_checkpoints_like_ctrl_c_exits_143_and_a_rerun_resumes(tmp_path, monkeypatch):
    run_dir = tmp_path / "terminated"
    before = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as m:
        m.setattr(cli, "_TrainReporter", _SigtermAt)
        code, out, err = train_sine(run_dir, 7)
    assert signal.getsignal(signal.SIGTERM) == before  # the CLI put the handler back
    assert code == 143
    assert "terminated (SIGTERM): stopping training" in err
    assert "interrupted at iteration 3/7" in err and "Resume with:" in err
    assert int(load_checkpoint(run_dir / "checkpoint.pt")["iteration"]) == 3
    code, _, err = train_sine(run_dir, 7)
    assert code == 0, err
    assert metric_iterations(run_dir) == list(range(1, 8))


def test_ctrl_c_checkpoints_exits_130_and_a_rerun_resumes(tmp_path, monkeypatch):
    interrupted, straight = tmp_path / "interrupted", tmp_path / "straight"
    # A process started in the background inherits SIGINT ignored: start from Python's default.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with monkeypatch.context() as m:
            m.setattr(cli, "_TrainReporter", _CtrlCAt)
            code, out, err = train_sine(interrupted, 7)
        restored = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert code == 130
    assert out == ""
    assert "interrupted at iteration 3/7" in err
    assert "Resume with: python -m metatrain train --preset sine" in err
    assert int(load_checkpoint(interrupted / "checkpoint.pt")["iteration"]) == 3
    assert not (interrupted / "initialization.safetensors").exists()
    assert restored is signal.default_int_handler  # the CLI put the handler back

    code, _, err = train_sine(interrupted, 7)
    assert code == 0, err
    assert "checkpoint of this config at iteration 3/7: resuming" in err
    assert metric_iterations(interrupted) == list(range(1, 8))

    assert train_sine(straight, 7)[0] == 0
    a = load_file(str(interrupted / "initialization.safetensors"))
    b = load_file(str(straight / "initialization.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def sine_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("cli") / "sine"
    code, _, err = train_sine(run_dir, 4)
    assert code == 0, err
    return run_dir


EVAL_KEYS = {
    "accuracy",
    "ci95",
    "tasks",
    "ways",
    "shots",
    "queries",
    "transductive",
    "split",
    "ci_method",
    "loss_before",
    "loss_after",
    "run_dir",
    "config_hash",
}


def test_evaluate_prints_one_json_object_with_the_result(sine_run):
    code, out, err = run("evaluate", str(sine_run), "--tasks", "3", "--shots", "5", "--seed", "4")
    assert code == 0, err
    assert len(out.splitlines()) == 1
    doc = json.loads(out)
    assert doc.keys() >= EVAL_KEYS
    assert (doc["tasks"], doc["shots"], doc["split"], doc["seed"]) == (3, 5, "test", 4)
    assert doc["loss_before"] > 0 and doc["loss_after"] > 0 and doc["ci95"] >= 0
    assert doc["accuracy"] is None
    config = json.loads((sine_run / "config.json").read_text())
    assert doc["config_hash"] == config["config_hash"]
    assert doc["run_dir"] == str(sine_run.resolve())
    assert "tf32" not in doc  # a CPU computes in IEEE float32 whatever was asked
    assert "3/3 tasks" in err  # progress on stderr only


def test_evaluate_depends_on_the_seed_only(sine_run):
    first = json.loads(run("evaluate", str(sine_run), "--tasks", "3")[1])
    again = json.loads(run("evaluate", str(sine_run), "--tasks", "3")[1])
    other = json.loads(run("evaluate", str(sine_run), "--tasks", "3", "--seed", "1")[1])
    assert first["loss_after"] == again["loss_after"]
    assert first["loss_after"] != other["loss_after"]


# --- the real entry point ---------------------------------------------------------------------


def python_m(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "metatrain", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


@pytest.mark.slow
def test_python_m_metatrain_trains_and_evaluates_end_to_end(tmp_path):
    run_dir = tmp_path / "r"
    trained = python_m("train", *SINE, "--iterations", "4", "--out", str(run_dir))
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout == ""
    evaluated = python_m("evaluate", str(run_dir), "--tasks", "2")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout).keys() >= EVAL_KEYS
    bad = python_m("evaluate", str(tmp_path / "missing"))
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and bad.stdout == ""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["sigint", "sigterm"]
)
def test_python_m_metatrain_stops_cleanly_on_a_signal(tmp_path, signum, code):
    run_dir = tmp_path / "r"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "metatrain", "train", *SINE, "--iterations", "1000000"]
    proc = subprocess.Popen(
        [*argv, "--out", str(run_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        metrics = run_dir / "metrics.jsonl"
        while not (metrics.exists() and metrics.stat().st_size > 0):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert "Resume with: python -m metatrain train" in err
    assert "Traceback" not in err
    assert int(load_checkpoint(run_dir / "checkpoint.pt")["iteration"]) >= 1


def test_threads_sets_torch_intra_op_threads_for_train_and_evaluate():
    import torch

    from metatrain import cli

    parser = cli.build_parser()
    for command in (["train", "--preset", "sine", "--out", "x"], ["evaluate", "x"]):
        assert parser.parse_args([*command, "--threads", "1"]).threads == 1
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cli.main(
            ["evaluate", "/nonexistent-run-dir", "--threads", "1"],
            out=io.StringIO(),
            err=io.StringIO(),
        )
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_tf32_is_an_opt_in_of_train_and_evaluate():
    parser = cli.build_parser()
    for command in (["train", "--preset", "sine", "--out", "x"], ["evaluate", "x"]):
        assert parser.parse_args(command).tf32 is False
        assert parser.parse_args([*command, "--tf32"]).tf32 is True
    code, out, err = run("bench", "--tf32")  # both sides of the bench stay in IEEE float32
    assert_usage_error(code, out, err, "--tf32")


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_it_rejects_a_bad_worker_count(tmp_path, value):
    code, out, err = run("train", "--preset", "sine", "--workers", value, "--out", str(tmp_path))
    assert_usage_error(code, out, err, "--workers", "auto")


def test_a_bad_workers_environment_variable_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("METATRAIN_WORKERS", "many")
    code, out, err = run("train", "--preset", "sine", "--out", str(tmp_path))
    assert_usage_error(code, out, err, "METATRAIN_WORKERS")


class _SigtermAfterTasks(cli._EvalProgress):
    """Sends this process SIGTERM once two evaluation tasks are done."""

    def should_stop(self) -> bool:
        if self.polls == 2:
            signal.raise_signal(signal.SIGTERM)
        return super().should_stop()


def test_sigterm_during_evaluate_stops_it_exits_143_and_prints_no_result(sine_run, monkeypatch):
    monkeypatch.setattr(cli, "_EvalProgress", _SigtermAfterTasks)
    code, out, err = run("evaluate", str(sine_run), "--tasks", "50", "--workers", "1")
    assert code == 143
    assert out == ""  # no partial result that a script could mistake for the real one
    assert "terminated (SIGTERM): stopping evaluation" in err
    assert "interrupted after 2/50 tasks" in err
