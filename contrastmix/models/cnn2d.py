"""A small 2-D CNN for 8x8 (digits), 16x16 and 32x32 images."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

__all__ = ["SmallCNN2d"]


class SmallCNN2d(nn.Module):
    """Three Conv-BN-ReLU stages (widths ``w, 2w, 4w``), stride 2 after the first stage when
    the input is larger than 8x8, then global average pooling.

    Args:
        in_channels: Image channels.
        width: Base width ``w``.

    Shapes:
        input ``[B, C, H, W]`` -> output ``[B, output_dim]`` with ``output_dim = 4 * w``.
    """

    def __init__(self, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]

        self.stage1 = nn.Sequential(*block(in_channels, width), *block(width, width))
        self.stage2 = nn.Sequential(*block(width, 2 * width), *block(2 * width, 2 * width))
        self.stage3 = nn.Sequential(*block(2 * width, 4 * width))
        self.output_dim = 4 * width

    def forward(self, x: Tensor) -> Tensor:
        h = self.stage1(x)
        if h.shape[-1] > 8:
            h = nn.functional.max_pool2d(h, 2)
        h = self.stage2(h)
        if h.shape[-1] > 4:
            h = nn.functional.max_pool2d(h, 2)
        h = self.stage3(h)
        return h.mean(dim=(2, 3))
