"""Batched two-view augmentations for small in-memory images (8x8 digits, 16x16, 32x32).

Per-sample random affine warps (scale, rotation, translation, shear) through
``affine_grid``/``grid_sample``, brightness/contrast jitter and Gaussian noise, applied to a batch
``[B, C, H, W]`` on its own device. For PIL datasets (CIFAR, ImageFolder) the recipes use lightly's
per-sample transforms instead (:mod:`contrastmix.data.images`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastmix._validation import check_tensor

__all__ = ["ImageBatchAugment"]


@dataclass
class ImageBatchAugment:
    """Random affine + photometric jitter on a batch of images.

    Args:
        scale: Range of the zoom factor (> 1 zooms in, like a random resized crop).
        rotation: Largest rotation in degrees.
        translate: Largest translation as a fraction of the image size.
        shear: Largest shear in degrees.
        brightness: Largest additive brightness change.
        contrast: Range of the multiplicative contrast factor.
        noise_std: Standard deviation of additive Gaussian noise.
    """

    scale: tuple[float, float] = (0.9, 1.3)
    rotation: float = 15.0
    translate: float = 0.15
    shear: float = 10.0
    brightness: float = 0.2
    contrast: tuple[float, float] = (0.7, 1.3)
    noise_std: float = 0.05

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        check_tensor("x", x, ndim=4, floating=True)
        b = x.shape[0]
        dev = x.device if generator is None else generator.device

        def u(lo: float, hi: float) -> Tensor:
            r = torch.rand(b, generator=generator, device=dev).to(x.device, torch.float32)
            return lo + (hi - lo) * r

        zoom = u(*self.scale)
        rot = u(-self.rotation, self.rotation) * math.pi / 180
        sh = u(-self.shear, self.shear) * math.pi / 180
        tx, ty = u(-self.translate, self.translate) * 2, u(-self.translate, self.translate) * 2
        cos, sin = torch.cos(rot), torch.sin(rot)
        theta = torch.zeros(b, 2, 3, device=x.device)
        theta[:, 0, 0] = cos / zoom
        theta[:, 0, 1] = (-sin + torch.tan(sh)) / zoom
        theta[:, 1, 0] = sin / zoom
        theta[:, 1, 1] = cos / zoom
        theta[:, 0, 2] = tx
        theta[:, 1, 2] = ty
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x.float(), grid, align_corners=False, padding_mode="zeros")
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * u(*self.contrast)[:, None, None, None] + mean
        out = out + u(-self.brightness, self.brightness)[:, None, None, None]
        if self.noise_std > 0:
            noise = torch.randn(out.shape, generator=generator, device=dev).to(x.device)
            out = out + self.noise_std * noise
        return out.to(x.dtype)
