"""A 1-D CNN backbone for short signals such as MNIST-1D (length 40)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["SignalCNN1d"]


def _block(c_in: int, c_out: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm1d(c_out),
        nn.ReLU(inplace=True),
    )


class SignalCNN1d(nn.Module):
    """Conv-BN-ReLU stack with circular-shift-friendly global pooling.

    Four convolution stages (widths ``w, 2w, 4w, 4w``; strides ``1, 2, 2, 1``), then the
    concatenation of global average and global max pooling, giving ``output_dim = 8 * w``
    features. Global pooling makes the features invariant to the circular translations the
    MNIST-1D generator applies, while the stacked receptive field still sees the digit's shape.

    Args:
        in_channels: Signal channels ``C``.
        width: Base width ``w``.

    Shapes:
        input ``[B, C, L]`` (or ``[B, L]``) -> output ``[B, output_dim]``.
    """

    def __init__(self, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _block(in_channels, width, 5, 1),
            _block(width, 2 * width, 3, 2),
            _block(2 * width, 4 * width, 3, 2),
            _block(4 * width, 4 * width, 3, 1),
        )
        self.output_dim = 8 * width

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 2:
            x = x.unsqueeze(1)
        h = self.features(x)
        return torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=1)
