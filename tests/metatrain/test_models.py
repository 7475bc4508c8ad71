"""The paper's networks: shapes, key names, batch-norm semantics, initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from metatrain import Config, preset
from metatrain.models import architecture, build_from_architecture, build_model, count_parameters


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_omniglot_net_shapes_and_parameter_count():
    model = build_model(Config(ways=5), _gen())
    out = model(torch.rand(7, 1, 28, 28))
    assert out.shape == (7, 5)
    # 4 x conv(3x3, 64) + BN; 28 -> 14 -> 7 -> 4 -> 2, so the head sees 2*2*64 = 256 features.
    assert model.fc.in_features == 256
    expected = (9 * 1 * 64 + 64) + 3 * (9 * 64 * 64 + 64) + 4 * 2 * 64 + (256 * 5 + 5)
    assert count_parameters(model) == expected == 113_221


def test_miniimagenet_net_shapes():
    cfg = preset("miniimagenet-5way-1shot")
    model = build_model(cfg, _gen())
    out = model(torch.rand(3, 3, 84, 84))
    assert out.shape == (3, 5)
    # 84 -> 42 -> 21 -> 11 -> 6 with TF's "same" (ceil) pooling: 6*6*32 features.
    assert model.fc.in_features == 6 * 6 * 32
    names = [name for name, _ in model.named_children()]
    assert names[:4] == ["conv1", "norm1", "pool1", "relu1"]


def test_sine_mlp_shape_and_tanh():
    model = build_model(preset("sine"), _gen())
    assert model(torch.rand(11, 1)).shape == (11, 1)
    assert [type(m) for m in model] == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear]
    assert (model.fc1.out_features, model.fc2.out_features) == (64, 64)


def test_state_dict_keys_are_plain():
    keys = list(build_model(Config(), _gen()).state_dict())
    assert keys[:4] == ["conv1.weight", "conv1.bias", "norm1.weight", "norm1.bias"]
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    assert len(keys) == 18  # weights only: batch norm keeps no running statistics


def test_batch_norm_always_uses_the_batch_statistics():
    model = build_model(Config(), _gen())
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        train_out = model.train()(x)
        eval_out = model.eval()(x)
        alone = model(x[:3])
    assert torch.equal(train_out, eval_out)  # no running stats, so mode does not matter
    # The first three rows change when the other three are not in the batch.
    assert not torch.allclose(alone, eval_out[:3])
    assert all(not m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_initialisation_is_glorot_uniform_with_zero_biases_and_deterministic():
    a = build_model(Config(), _gen(1))
    b = build_model(Config(), _gen(1))
    c = build_model(Config(), _gen(2))
    for (name, pa), pb, pc in zip(
        a.named_parameters(), b.parameters(), c.parameters(), strict=True
    ):
        assert torch.equal(pa, pb)
        if name.startswith(("conv", "fc")) and name.endswith("weight"):
            assert not torch.equal(pa, pc)
            fan_in = pa[0].numel()
            fan_out = pa.shape[0] * pa[0, 0].numel() if pa.dim() == 4 else pa.shape[0]
            assert pa.abs().max() <= math.sqrt(6 / (fan_in + fan_out))
        elif name.startswith(("conv", "fc")):
            assert torch.count_nonzero(pa) == 0


def test_rebuild_from_architecture_matches():
    cfg = Config(ways=20)
    arch = architecture(cfg)
    assert arch["name"] == "omniglot_conv" and arch["ways"] == 20 and arch["in_channels"] == 1
    model = build_from_architecture(arch)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 20)
    with pytest.raises(ValueError):
        build_from_architecture({"name": "resnet"})
