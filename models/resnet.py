"""ResNet backbones with the exact module names of the SCAN model zoo.

The published checkpoints are plain state dicts, so the attribute names here (`conv1`, `bn1`, `layerN.i.shortcut.{0,1}`,
...) are part of the file format and must not change. Backbones return pooled, flattened features; no classifier.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

from models.library import build_library_backbone
from utils.library_names import is_library_backbone


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (He et al., 2016)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            # Keys `shortcut.0` (conv) and `shortcut.1` (BN) are what the checkpoints hold.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for small images.

    `stem='cifar'`: 3×3/1 stem, no max-pool, adaptive average pool (32×32 input). `stem='stl'`: same plus MaxPool(2, 2,
    padding 1) after the stem and a fixed AvgPool(7) at the end, as used for STL-10's 96×96 crops. Neither adds
    parameters, so both variants share one state-dict layout. `base_width` scales every stage (64 gives the published
    model; smaller widths make small demos fast). Output dimension is 8 × base_width.
    """

    def __init__(self, stem: str = "cifar", base_width: int = 64) -> None:
        super().__init__()
        if stem not in ("cifar", "stl"):
            raise ValueError(f"Unknown ResNet-18 stem '{stem}': use 'cifar' or 'stl'.")
        widths = [base_width, 2 * base_width, 4 * base_width, 8 * base_width]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.stem_pool = nn.MaxPool2d(kernel_size=2, stride=2, padding=1) if stem == "stl" else nn.Identity()
        in_planes = widths[0]
        for index, (planes, stride) in enumerate(zip(widths, [1, 2, 2, 2]), start=1):
            blocks = [BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)]
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
            in_planes = planes
        self.avgpool = nn.AvgPool2d(7, stride=1) if stem == "stl" else nn.AdaptiveAvgPool2d((1, 1))
        self.out_dim = widths[-1]

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def resnet50() -> nn.Module:
    """torchvision's ResNet-50 without its classifier (2048-d output, keys as torchvision's)."""
    model = torchvision.models.resnet50(weights=None)
    model.fc = nn.Identity()
    model.out_dim = 2048
    return model


def build_backbone(name: str, **kwargs) -> nn.Module:
    """Backbone by config name; the module gets an `out_dim` attribute. `torchvision:<name>` / `timm:<name>` are the
    libraries' models without classifier (models/library.py)."""
    if is_library_backbone(name):
        return build_library_backbone(name)
    return ResNet18(**kwargs) if name == "resnet18" else resnet50()
