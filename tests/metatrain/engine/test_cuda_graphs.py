"""CUDA graphs for the inner step (metatrain.engine.cuda_graphs) and the optimizer state they
need.

The graph tests need a CUDA device (marked ``gpu``, skipped without one: CI has none; they
were run on an H200; figures in docs/benchmarks.md). The state-handling tests run anywhere.
"""

from __future__ import annotations

import pytest
import torch

from metatrain import Compute, preset
from metatrain.engine.device import prepare_model
from metatrain.engine.learner import Learner
from metatrain.models import build_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _learner(device: str, cuda_graphs: bool, keep_state: bool = True, **kw) -> Learner:
    cfg = preset("omniglot-5way-1shot", keep_adam_state=keep_state)
    model = build_model(cfg, torch.Generator().manual_seed(0))
    prepare_model(model, torch.device(device))
    return Learner.from_config(model, cfg, cuda_graphs=cuda_graphs, **kw)


def _batches(device: str, n: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = (torch.rand(size, 1, 28, 28, generator=g) > 0.5).float().to(device)
        yield (
            x.contiguous(memory_format=torch.channels_last),
            torch.randint(0, 5, (size,), generator=g).to(device),
        )


def test_a_checkpoint_saved_with_capturable_adam_loads_and_steps_on_the_cpu():
    learner = _learner("cpu", cuda_graphs=True)  # no CUDA: graphs are not used
    assert learner.step_kind != "cuda_graph" and not learner.uses_cuda_graphs
    for x, y in _batches("cpu", 2, 10):
        learner.step(x, y)
    saved = learner.optimizer.state_dict()
    for group in saved["param_groups"]:
        group["capturable"] = True  # as written by a run on a GPU with graphs
    other = _learner("cpu", cuda_graphs=True)
    other.load_optimizer_state(saved)
    assert all(not g["capturable"] for g in other.optimizer.param_groups)
    for x, y in _batches("cpu", 1, 10, seed=1):
        other.step(x, y)  # a capturable Adam on CPU tensors would raise here


def test_resetting_the_optimizer_without_graphs_forgets_its_state():
    learner = _learner("cpu", cuda_graphs=False, keep_state=False)
    for x, y in _batches("cpu", 1, 10):
        learner.step(x, y)
    assert learner.optimizer.state
    learner.begin_task()
    assert not learner.optimizer.state


@pytest.mark.gpu
@needs_cuda
def test_graph_replays_compute_what_eager_capturable_steps_compute():
    graphed = _learner("cuda", cuda_graphs=True, keep_state=False)
    # The same capturable Adam, kernels launched one by one.
    eager = _learner("cuda", cuda_graphs=True, keep_state=False, step="autograd", capturable=True)
    theta = graphed.copy_params()
    for task in range(3):  # tasks with a reset in between, two batch shapes
        for learner in (graphed, eager):
            learner.load_params(theta)
            learner.begin_task()
        batches = list(_batches("cuda", 4, 10, seed=task)) + list(_batches("cuda", 2, 5, task))
        for x, y in batches:
            graphed.step(x, y)
            eager.step(x, y)
    assert graphed.uses_cuda_graphs and graphed.inner_step.graphs.captures == 2
    for a, b in zip(graphed.params, eager.params, strict=True):
        assert torch.equal(a, b)


@pytest.mark.gpu
@needs_cuda
def test_capture_changes_neither_weights_nor_optimizer_state():
    learner = _learner("cuda", cuda_graphs=True)
    for x, y in _batches("cuda", 2, 10):
        learner.step(x, y)  # the first step captures (batch 10)
    x5, y5 = next(_batches("cuda", 1, 5, seed=3))
    reference = _learner("cuda", cuda_graphs=True, step="autograd", capturable=True)
    reference.load_params(learner.copy_params())
    # By position, not optimizer_snapshot(): a snapshot is keyed by the learner's own
    # parameter objects and only restores into that learner (a first version of this test
    # restored it into the reference, which then started from a fresh Adam).
    reference.load_optimizer_state(learner.optimizer.state_dict())
    learner.step(x5, y5)  # captures batch 5 (warm-up steps undone), then one real step
    reference.step(x5, y5)
    for a, b in zip(learner.params, reference.params, strict=True):
        assert torch.equal(a, b)


@pytest.mark.gpu
@needs_cuda
def test_training_on_the_gpu_with_and_without_graphs_agrees(tmp_path, monkeypatch):
    from metatrain import train

    data = pytest.importorskip("metatrain.data")
    if not data.omniglot_available(None):
        pytest.skip("no Omniglot under $METATRAIN_DATA")
    cfg = preset("omniglot-5way-1shot", meta_iters=4, validation_interval=2, validation_tasks=5)
    graphed = train(cfg, tmp_path / "graphs", compute=Compute(device="cuda"))
    eager = train(cfg, tmp_path / "eager", compute=Compute(device="cuda", cuda_graphs=False))
    assert graphed.iterations_done == eager.iterations_done == 4
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "graphs" / "initialization.safetensors"))
    b = load_file(str(tmp_path / "eager" / "initialization.safetensors"))
    for name in a:
        if name.startswith("conv") and name.endswith(".bias"):
            continue  # zero gradient up to rounding under batch norm (docs/engine.md)
        diff = float((a[name] - b[name]).abs().max())
        assert diff < 5e-3, f"{name}: max abs difference {diff:.2e}"
