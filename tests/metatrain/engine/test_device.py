"""Device helpers (metatrain.engine.device): the float32 precision a GPU computes in.

PyTorch's precision flags can be set and read without a GPU, so the context manager's logic is
tested everywhere; the tests marked ``gpu`` check on a real device that the flags take effect
and that ``train()`` runs under them (run on an H100; figures in docs/benchmarks.md).
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from metatrain import Compute, preset
from metatrain.engine.device import float32_precision
from metatrain.reporting import PrintReporter, Reporter

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def _flags() -> tuple[str, str]:
    return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision


def _set_flags(conv: str, matmul: str) -> None:
    torch.backends.cudnn.conv.fp32_precision = conv
    torch.backends.cuda.matmul.fp32_precision = matmul


@pytest.fixture
def restore_flags():
    """Put back whatever precision flags were set before the test."""
    saved = _flags()
    yield
    _set_flags(*saved)


@pytest.fixture
def tf32_by_default(restore_flags):
    """PyTorch's own defaults on a GPU: TF32 convolutions."""
    _set_flags("tf32", "tf32")


def test_a_gpu_block_computes_in_ieee_float32_and_restores_the_callers_setting(tf32_by_default):
    with float32_precision(CUDA):
        assert _flags() == ("ieee", "ieee")
    assert _flags() == ("tf32", "tf32")


def test_tf32_is_used_on_a_gpu_only_when_asked_for(restore_flags):
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    with float32_precision(CUDA, tf32=True):
        assert _flags() == ("tf32", "tf32")
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"


def test_the_callers_setting_comes_back_after_an_error(tf32_by_default):
    with pytest.raises(RuntimeError, match="inside"), float32_precision(CUDA):
        raise RuntimeError("inside")
    assert _flags() == ("tf32", "tf32")


def test_a_cpu_block_leaves_the_gpu_flags_alone(tf32_by_default):
    with float32_precision(torch.device("cpu")):
        assert _flags() == ("tf32", "tf32")


def test_the_progress_line_says_which_precision_a_gpu_run_uses():
    stream = io.StringIO()
    reporter = PrintReporter(stream=stream, refresh=0.0)
    reporter.on_start({"total_iterations": 10, "device": "cuda", "tf32": False})
    reporter.on_start({"total_iterations": 10, "device": "cuda:0", "tf32": True})
    reporter.on_start({"total_iterations": 10, "device": "cpu", "tf32": False})
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("on cuda, IEEE float32")
    assert lines[1].endswith("on cuda:0, TF32 allowed")
    assert lines[2].endswith("on cpu")


def _relative_conv_error(tf32: bool) -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 64, 14, 14, generator=g)
    w = torch.randn(64, 64, 3, 3, generator=g)
    exact = F.conv2d(x.double(), w.double(), padding=1)
    with float32_precision(CUDA, tf32):
        y = F.conv2d(x.to(CUDA), w.to(CUDA), padding=1).double().cpu()
    return float((y - exact).abs().max() / exact.abs().max())


@pytest.mark.gpu
@needs_cuda
def test_gpu_convolutions_are_ieee_float32_unless_tf32_is_asked_for(tf32_by_default):
    assert _relative_conv_error(tf32=False) < 1e-5
    if torch.cuda.get_device_capability() >= (8, 0):  # TF32 tensor cores: Ampere and later
        assert _relative_conv_error(tf32=True) > 1e-4


class _PrecisionSeen(Reporter):
    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()
        self.tf32: bool | None = None

    def on_start(self, info) -> None:
        self.tf32 = info["tf32"]

    def on_iteration(self, iteration, metrics) -> None:
        self.seen.add(_flags())


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("tf32", [False, True])
def test_training_on_the_gpu_runs_in_the_precision_asked_for(tmp_path, tf32, tf32_by_default):
    from metatrain import train

    data = pytest.importorskip("metatrain.data")
    if not data.omniglot_available(None):
        pytest.skip("no Omniglot under $METATRAIN_DATA")
    seen = _PrecisionSeen()
    cfg = preset("omniglot-5way-1shot", meta_iters=3, validation_interval=0)
    train(cfg, tmp_path, reporter=seen, compute=Compute(device="cuda", tf32=tf32))
    mode = "tf32" if tf32 else "ieee"
    assert seen.tf32 is tf32 and seen.seen == {(mode, mode)}
    assert _flags() == ("tf32", "tf32")


def test_a_cpu_run_reports_float32_even_when_tf32_is_asked_for(tmp_path):
    from metatrain import train

    seen = _PrecisionSeen()
    train(
        preset("sine", meta_iters=1, validation_interval=0),
        tmp_path,
        reporter=seen,
        compute=Compute(device="cpu", tf32=True),
    )
    assert seen.tf32 is False
