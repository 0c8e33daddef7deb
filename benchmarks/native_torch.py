"""A native PyTorch implementation of the same CIFAR pre-activation layouts, as the speed baseline.

Same units, shortcuts and parameter count as `keras_preact.PreActResNet(depth, block)` with the
CIFAR stem (checked by the benchmark before timing).
"""

import torch
from torch import nn


def bn(channels):
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


class PreActUnit(nn.Module):
    def __init__(self, in_channels, filters, stride, bottleneck, shared):
        super().__init__()
        out_channels = filters * 4 if bottleneck else filters
        self.shared = shared  # first unit of a stage: the shortcut reads the pre-activated input
        self.preact = nn.Sequential(bn(in_channels), nn.ReLU(inplace=False))
        if bottleneck:
            self.residual = nn.Sequential(
                nn.Conv2d(in_channels, filters, 1, stride, bias=False), bn(filters), nn.ReLU(),
                nn.Conv2d(filters, filters, 3, 1, 1, bias=False), bn(filters), nn.ReLU(),
                nn.Conv2d(filters, out_channels, 1, bias=False),
            )
        else:
            self.residual = nn.Sequential(
                nn.Conv2d(in_channels, filters, 3, stride, 1, bias=False), bn(filters), nn.ReLU(),
                nn.Conv2d(filters, filters, 3, 1, 1, bias=False),
            )
        changes = in_channels != out_channels or stride != 1
        self.projection = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False) if changes else None

    def forward(self, x):
        activated = self.preact(x)
        shortcut_input = activated if self.shared else x
        shortcut = self.projection(shortcut_input) if self.projection is not None else shortcut_input
        return shortcut + self.residual(activated)


class PreActResNet(nn.Module):
    def __init__(self, depth, bottleneck, classes=10):
        super().__init__()
        n = (depth - 2) // (9 if bottleneck else 6)
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        units, channels = [], 16
        for filters, stride in ((16, 1), (32, 2), (64, 2)):
            for index in range(n):
                units.append(PreActUnit(channels, filters, stride if index == 0 else 1, bottleneck, index == 0))
                channels = filters * 4 if bottleneck else filters
        self.units = nn.Sequential(*units)
        self.head = nn.Sequential(bn(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))

    def forward(self, x):
        return self.head(self.units(self.stem(x)))


def parameter_counts(model):
    """(trainable, all) in Keras' sense: parameters, plus BatchNorm running mean and variance."""
    trainable = sum(p.numel() for p in model.parameters())
    stats = sum(m.running_mean.numel() + m.running_var.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    return trainable, trainable + stats
