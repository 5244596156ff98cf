"""PyTorch twins of lowmem models, built from a lowmem config alone (shared by the PyTorch reference tests).

Each lowmem layer spec becomes one torch module in float64; a residual block's submodule names are lowmem's
HDF5 names (conv1, bn1, conv2, bn2, shortcut, shortcut_bn), so weights can be loaded by name.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    """torchvision-style post-activation block; submodule names are lowmem's HDF5 names."""

    def __init__(self, cin, out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        if stride != 1 or cin != out:
            self.shortcut = nn.Conv2d(cin, out, 1, stride, 0, bias=False)
            self.shortcut_bn = nn.BatchNorm2d(out)

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        s = self.shortcut_bn(self.shortcut(x)) if hasattr(self, "shortcut") else x
        return F.relu(y + s)


def make_layer(spec, shape):
    """One torch module for one lowmem layer spec (lowmem's defaults applied); shape excludes the batch."""
    t = spec["type"]
    if t == "conv":
        return nn.Conv2d(shape[0], spec["out"], spec["kernel"], spec.get("stride", 1), spec.get("pad", 0),
                         bias=spec.get("bias", True))
    if t == "linear":
        return nn.Linear(shape[0], spec["out"], bias=spec.get("bias", True))
    if t == "batchnorm":
        bn = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
        return bn(shape[0], eps=spec.get("eps", 1e-5), momentum=spec.get("momentum", 0.1))
    if t == "residual":
        return BasicBlock(shape[0], spec["out"], spec.get("stride", 1))
    if t == "maxpool":
        return nn.MaxPool2d(spec["kernel"], spec.get("stride", spec["kernel"]))
    if t == "avgpool":
        return nn.AvgPool2d(spec["kernel"], spec.get("stride", spec["kernel"]))
    simple = {"relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(spec.get("slope", 0.01)), "flatten": nn.Flatten(),
              "global_avgpool": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())}
    return simple[t]


def build_model(config):
    """nn.Sequential in float64, training mode, built from the config alone (not from the HDF5 shapes)."""
    shape, layers = list(config["model"]["input"]), []
    for spec in config["model"]["layers"]:
        layers.append(make_layer(spec, shape).double().eval())
        with torch.no_grad():
            shape = list(layers[-1](torch.zeros(2, *shape, dtype=torch.float64)).shape[1:])
    assert shape == [config["model"]["classes"]], f"model output {shape}"
    return nn.Sequential(*layers).train()
