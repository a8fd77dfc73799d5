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
  :func:`shot_groups` then labels each test sample many-/medium-/few-shot by the number of
  training samples in its label bin.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from contrastmix._validation import check_positive, check_tensor

__all__ = [
    "load_rotated_digits",
    "rotate_images",
    "shot_groups",
    "SHOT_NAMES",
    "MANY_SHOT",
    "MEDIUM_SHOT",
    "FEW_SHOT",
    "MAX_ANGLE",
]

MAX_ANGLE = 90.0
SHOT_NAMES = ("many", "medium", "few")
MANY_SHOT, MEDIUM_SHOT, FEW_SHOT = 0, 1, 2


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


def shot_groups(
    train_labels: Tensor,
    test_labels: Tensor,
    bins: int | Tensor = 30,
    *,
    value_range: tuple[float, float] = (0.0, MAX_ANGLE),
    many_threshold: int = 50,
    few_threshold: int = 10,
) -> Tensor:
    """Many-/medium-/few-shot group of each test sample (imbalanced-regression evaluation).

    The label axis is cut into bins; a test sample is *many-shot* when its bin holds more than
    ``many_threshold`` training samples, *few-shot* when it holds fewer than ``few_threshold``,
    and *medium-shot* otherwise. The literature (Yang et al. 2021: AgeDB-DIR / IMDB-WIKI-DIR,
    1-year bins, 12k-190k training images) uses 100 and 20; the defaults here are scaled for
    rotated digits (about 1350 training images in 30 bins of 3 degrees): 50 and 10, which with
    the default long-tailed variant gives roughly a third of the angle range per group.

    Args:
        train_labels: ``[N_train]`` training targets.
        test_labels: ``[N_test]`` test targets.
        bins: Number of equal-width bins over ``value_range``, or ``[M + 1]`` increasing bin
            edges. Values outside the range fall into the first / last bin.
        value_range: ``(low, high)`` for an integer ``bins``.
        many_threshold: Strictly more training samples than this -> many-shot.
        few_threshold: Strictly fewer training samples than this -> few-shot.

    Returns:
        ``[N_test]`` LongTensor with :data:`MANY_SHOT` (0), :data:`MEDIUM_SHOT` (1) or
        :data:`FEW_SHOT` (2); names in :data:`SHOT_NAMES`.
    """
    check_tensor("train_labels", train_labels, ndim=1)
    check_tensor("test_labels", test_labels, ndim=1)
    if few_threshold > many_threshold + 1:
        raise ValueError(
            f"`few_threshold` ({few_threshold}) must not exceed `many_threshold` + 1 "
            f"({many_threshold + 1})"
        )
    if isinstance(bins, int):
        check_positive("bins", bins)
        low, high = value_range
        if not high > low:
            raise ValueError(f"`value_range` must be increasing, got {value_range}")
        edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    else:
        edges = check_tensor("bins", bins, ndim=1).to(torch.float64).cpu()
        if edges.numel() < 2 or not bool((edges[1:] > edges[:-1]).all()):
            raise ValueError("`bins` edges must be at least 2 strictly increasing values")
    inner = edges[1:-1]
    n_bins = edges.numel() - 1

    def bin_of(v: Tensor) -> Tensor:
        return torch.bucketize(v.detach().to(torch.float64).cpu(), inner, right=True)

    counts = torch.bincount(bin_of(train_labels), minlength=n_bins)
    c = counts[bin_of(test_labels)]
    out = torch.full_like(c, MEDIUM_SHOT)
    out[c > many_threshold] = MANY_SHOT
    out[c < few_threshold] = FEW_SHOT
    return out.to(test_labels.device)
