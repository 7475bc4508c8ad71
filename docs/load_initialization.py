# Load a trained initialization with torch + safetensors only (no pickle, no metatrain).
import json
import math
from collections import OrderedDict

from safetensors.torch import load_file
from torch import nn

with open("config.json") as f:
    meta = json.load(f)
arch = meta["architecture"]
weights = load_file("initialization.safetensors")

if arch["name"] == "sine_mlp":
    h = arch.get("hidden", 64)
    model = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(1, h),
            tanh1=nn.Tanh(),
            fc2=nn.Linear(h, h),
            tanh2=nn.Tanh(),
            fc3=nn.Linear(h, 1),
        )
    )
else:  # omniglot_conv (stride 2) or miniimagenet_conv (2x2 max-pool, ceil mode)
    layers, channels, size = OrderedDict(), arch["in_channels"], arch["image_size"]
    for i in range(1, arch["layers"] + 1):
        stride = 2 if arch["name"] == "omniglot_conv" else 1
        layers[f"conv{i}"] = nn.Conv2d(channels, arch["filters"], 3, stride=stride, padding=1)
        # Batch norm always uses the current batch's statistics, as in the paper's code.
        layers[f"norm{i}"] = nn.BatchNorm2d(arch["filters"], eps=1e-3, track_running_stats=False)
        if arch["name"] == "miniimagenet_conv":
            layers[f"pool{i}"] = nn.MaxPool2d(2, 2, ceil_mode=True)
        layers[f"relu{i}"] = nn.ReLU()
        channels, size = arch["filters"], math.ceil(size / 2)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(channels * size * size, arch["ways"])
    model = nn.Sequential(layers)

model.load_state_dict(weights)
print(meta["preprocessing"]["description"])
# Fine-tune on your own N-way K-shot support set (inputs as meta["preprocessing"] says), e.g.
# opt = torch.optim.Adam(model.parameters(), lr=meta["config"]["inner_lr"], betas=(0, 0.999))
