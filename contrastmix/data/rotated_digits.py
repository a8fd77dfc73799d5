"""Rotated digits: a small image-regression task (predict the rotation angle), offline.

scikit-learn's handwritten digits (1797 grey 8x8 images) are upsampled to 16x16 with bilinear
interpolation and rotated counter-clockwise (torchvision's convention) by an angle in degrees,
which is the regression target. The train/test split is stratified by digit class and fixed
by ``seed``; the angles are drawn from a generator seeded by ``seed`` as well.

* Balanced variant: angles ``~ U[0, 90)`` for both splits.
* Long-tailed variant (imbalanced regression, as in Yang et al., "Delving into Deep Imbalanced
  Regression", ICML 2021): *training* angles follow a truncated exponential density on
  ``[0, 90)`` whose head-to-tail density ratio is ``imbalance_ratio`` (100 by default); the
  *test* split stays uniform (balanced) and is identical to the balanced variant's test split.
  :func:`~contrastmix.data.shots.shot_groups` with :data:`SHOT_SETTINGS` then labels each test
  sample many-/medium-/few-shot by the number of training samples in its label bin.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from contrastmix._validation import check_tensor
from contrastmix.data.shots import FEW_SHOT, MANY_SHOT, MEDIUM_SHOT, SHOT_NAMES, shot_groups

__all__ = [
    "load_rotated_digits",
    "rotate_images",
    "shot_groups",
    "SHOT_SETTINGS",
    "SHOT_NAMES",
    "MANY_SHOT",
    "MEDIUM_SHOT",
    "FEW_SHOT",
    "MAX_ANGLE",
]

MAX_ANGLE = 90.0

#: Keywords of :func:`~contrastmix.data.shots.shot_groups` for rotated digits: 30 bins of 3
#: degrees over ``[0, 90)``, many-shot above 50 and few-shot below 10 training samples. The
#: literature's 100 / 20 (Yang et al. 2021, 12k-190k training images) scaled to about 1350
#: training images: with the default long-tailed variant, roughly a third of the angle range
#: per group.
SHOT_SETTINGS: dict[str, Any] = {
    "bins": 30, "value_range": (0.0, MAX_ANGLE), "many": 50, "few": 10,
}


def rotate_images(images: Tensor, angles: Tensor) -> Tensor:
    """Rotate each image counter-clockwise about its centre (bilinear, zero fill).

    Same convention as ``torchvision.transforms.functional.rotate`` (an angle of 90 equals
    ``torch.rot90(x, 1, dims=(-2, -1))``), batched with one angle per image.

    Args:
        images: ``[N, C, H, W]`` float images.
        angles: ``[N]`` angles in degrees.

    Returns:
        ``[N, C, H, W]`` rotated images.
    """
    check_tensor("images", images, ndim=4, floating=True)
    check_tensor("angles", angles, ndim=1)
    if angles.shape[0] != images.shape[0]:
        raise ValueError(
            f"length mismatch: `images` has {images.shape[0]} rows, `angles` has {angles.shape[0]}"
        )
    t = torch.deg2rad(angles.to(torch.float64))
    c, s = torch.cos(t), torch.sin(t)
    theta = torch.zeros(images.shape[0], 2, 3, dtype=torch.float64, device=images.device)
    theta[:, 0, 0], theta[:, 0, 1] = c, -s
    theta[:, 1, 0], theta[:, 1, 1] = s, c
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _long_tailed_angles(u: Tensor, imbalance_ratio: float) -> Tensor:
    """Inverse CDF of the truncated exponential on [0, 90), density ratio ``imbalance_ratio``."""
    if imbalance_ratio == 1.0:
        return u * MAX_ANGLE
    beta = MAX_ANGLE / math.log(imbalance_ratio)
    return -beta * torch.log1p(-u * (1.0 - 1.0 / imbalance_ratio))


def load_rotated_digits(
    split: str = "train",
    *,
    seed: int = 0,
    long_tailed: bool = False,
    test_fraction: float = 0.25,
    imbalance_ratio: float = 100.0,
) -> tuple[Tensor, Tensor]:
    """Load the rotated-digits regression split.

    Args:
        split: ``"train"`` or ``"test"``.
        seed: Seed of the split and of the angles (same split for every variant).
        long_tailed: Skewed training angles (test split stays uniform).
        test_fraction: Share of the 1797 images in the test split (stratified by digit).
        imbalance_ratio: Density ratio between angle 0 and angle 90 of the long-tailed
            training distribution (>= 1).

    Returns:
        ``x [N, 1, 16, 16]`` float32 in ``[0, 1]`` and ``y [N]`` float32 angles in ``[0, 90)``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction}")
    if not imbalance_ratio >= 1.0:
        raise ValueError(f"`imbalance_ratio` must be >= 1, got {imbalance_ratio}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    n = len(d.target)
    tr, te = train_test_split(
        np.arange(n), test_size=test_fraction, random_state=seed, stratify=d.target
    )
    sel = torch.from_numpy(tr if split == "train" else te)
    g = torch.Generator().manual_seed(seed)
    uniform = torch.rand(n, generator=g, dtype=torch.float64) * MAX_ANGLE
    skewed = _long_tailed_angles(torch.rand(n, generator=g, dtype=torch.float64), imbalance_ratio)
    angles = (skewed if (long_tailed and split == "train") else uniform)[sel]
    angles = angles.clamp(max=math.nextafter(MAX_ANGLE, 0.0))
    img = torch.from_numpy(d.images.astype(np.float32) / 16.0)[sel].unsqueeze(1)
    img = F.interpolate(img, size=(16, 16), mode="bilinear", align_corners=False)
    x = rotate_images(img, angles.float()).clamp(0.0, 1.0)
    return x.contiguous(), angles.float()
