"""torchvision ResNet-18/50 backbones with an optional CIFAR stem."""

from __future__ import annotations

import torch.nn as nn
import torchvision
from torch import Tensor

__all__ = ["ResNetBackbone"]


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its classifier (randomly initialised; no weights download).

    Args:
        arch: ``"resnet18"`` or ``"resnet50"``.
        cifar_stem: Replace the 7x7/stride-2 stem and max-pool by a 3x3/stride-1 conv, the usual
            choice for 32x32 inputs.
        in_channels: Input channels.

    Shapes:
        input ``[B, C, H, W]`` -> output ``[B, output_dim]`` (512 or 2048).
    """

    def __init__(self, arch: str = "resnet18", cifar_stem: bool = False, in_channels: int = 3):
        super().__init__()
        if arch not in ("resnet18", "resnet50"):
            raise ValueError(f"`arch` must be 'resnet18' or 'resnet50', got {arch!r}")
        net = getattr(torchvision.models, arch)(weights=None)
        if cifar_stem or in_channels != 3:
            k, s, p = (3, 1, 1) if cifar_stem else (7, 2, 3)
            net.conv1 = nn.Conv2d(in_channels, 64, k, s, p, bias=False)
        if cifar_stem:
            net.maxpool = nn.Identity()
        self.output_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
