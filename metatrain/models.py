"""The paper's networks, built from a config or from the architecture record of config.json.

State-dict keys are deliberately plain (``conv1.weight``, ``norm1.bias``, ``fc.weight``) so that
a user can load ``initialization.safetensors`` with nothing but torch and safetensors.

Faithfulness to supervised-reptile (TensorFlow):
- batch norm always normalises with the current batch's statistics and keeps no running
  averages (``track_running_stats=False``), as ``tf.layers.batch_normalization(training=True)``;
  its epsilon is TF's default 1e-3;
- weights use Glorot-uniform initialisation and biases start at zero (TF's defaults);
- convolutions keep their bias (TF's ``conv2d`` default) although batch norm follows;
- "same" padding is padding 1 on every side; TF pads stride-2 convolutions of even inputs on
  the bottom/right only, which gives the same output sizes with a one-pixel shift;
- Mini-ImageNet's 2x2 max-pool rounds odd sizes up, as TF's ``padding='same'`` (84 -> 42 ->
  21 -> 11 -> 6), hence ``ceil_mode=True``.
The sine MLP follows the PyTorch Reptile sine demo and keeps PyTorch's default initialisation.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from .config import Config

__all__ = ["architecture", "build_model", "build_from_architecture", "count_parameters"]

BN_EPS = 1e-3  # tf.layers.batch_normalization's default


def architecture(config: Config) -> dict[str, Any]:
    """The record saved in config.json that is enough to rebuild the network."""
    if config.model == "omniglot_conv":
        return {
            "name": "omniglot_conv",
            "in_channels": config.in_channels,
            "image_size": config.image_size,
            "ways": config.ways,
            "filters": 64,
            "layers": 4,
            "description": "4 x [conv3x3 stride 2 padding 1, batch norm (batch statistics, "
            "eps 1e-3), ReLU], flatten, linear",
        }
    if config.model == "miniimagenet_conv":
        return {
            "name": "miniimagenet_conv",
            "in_channels": config.in_channels,
            "image_size": config.image_size,
            "ways": config.ways,
            "filters": 32,
            "layers": 4,
            "description": "4 x [conv3x3 padding 1, batch norm (batch statistics, eps 1e-3), "
            "maxpool 2x2 (ceil), ReLU], flatten, linear",
        }
    return {
        "name": "sine_mlp",
        "in_features": 1,
        "hidden": 64,
        "out_features": 1,
        "description": "linear 1-64, tanh, linear 64-64, tanh, linear 64-1",
    }


def build_model(config: Config, generator: torch.Generator | None = None) -> nn.Module:
    """The network named by ``config.model``, initialised from ``generator``."""
    return build_from_architecture(architecture(config), generator=generator)


def build_from_architecture(
    arch: dict[str, Any], generator: torch.Generator | None = None
) -> nn.Module:
    """Rebuild a network from its architecture record (see ``architecture``)."""
    name = arch.get("name")
    if name == "omniglot_conv":
        model = _conv_net(arch, stride=2, pool=False)
    elif name == "miniimagenet_conv":
        model = _conv_net(arch, stride=1, pool=True)
    elif name == "sine_mlp":
        return _sine_mlp(arch, generator)
    else:
        raise ValueError(f"unknown architecture {name!r}")
    _glorot_init(model, generator)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_net(arch: dict[str, Any], *, stride: int, pool: bool) -> nn.Sequential:
    in_channels = int(arch["in_channels"])
    filters = int(arch["filters"])
    size = int(arch["image_size"])
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels = in_channels
    for i in range(1, int(arch.get("layers", 4)) + 1):
        layers[f"conv{i}"] = nn.Conv2d(channels, filters, 3, stride=stride, padding=1)
        layers[f"norm{i}"] = nn.BatchNorm2d(filters, eps=BN_EPS, track_running_stats=False)
        if pool:
            layers[f"pool{i}"] = nn.MaxPool2d(2, 2, ceil_mode=True)
        layers[f"relu{i}"] = nn.ReLU()
        channels = filters
        size = (size + 2 - 3) // stride + 1
        if pool:
            size = math.ceil(size / 2)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(filters * size * size, int(arch["ways"]))
    return nn.Sequential(layers)


def _glorot_init(model: nn.Module, generator: torch.Generator | None) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(module.weight, generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


def _sine_mlp(arch: dict[str, Any], generator: torch.Generator | None) -> nn.Sequential:
    hidden = int(arch.get("hidden", 64))
    model = nn.Sequential(
        OrderedDict(
            [
                ("fc1", nn.Linear(int(arch.get("in_features", 1)), hidden)),
                ("tanh1", nn.Tanh()),
                ("fc2", nn.Linear(hidden, hidden)),
                ("tanh2", nn.Tanh()),
                ("fc3", nn.Linear(hidden, int(arch.get("out_features", 1)))),
            ]
        )
    )
    # PyTorch's default nn.Linear initialisation, drawn from ``generator``.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                bound = 1.0 / math.sqrt(module.in_features)
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
    return model
