"""Two-view augmentations keep shapes, are reproducible, and reduce to the identity."""

from __future__ import annotations

import torch

from contrastmix.data.augment1d import SignalAugment
from contrastmix.data.augment2d import ImageBatchAugment


def test_signal_augment_keeps_shape_and_dtype() -> None:
    x = torch.randn(16, 1, 40)
    y = SignalAugment()(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert SignalAugment()(x[:, 0]).shape == (16, 40)


def test_signal_augment_identity_settings() -> None:
    x = torch.randn(8, 1, 40)
    ident = SignalAugment(crop_scale=(1, 1), max_shift=0, amplitude=(1, 1), shear=0, noise_std=0)
    torch.testing.assert_close(ident(x), x, atol=1e-5, rtol=0)


def test_signal_augment_pure_shift_is_a_circular_roll() -> None:
    x = torch.randn(4, 1, 40)
    aug = SignalAugment(crop_scale=(1, 1), max_shift=1.0, amplitude=(1, 1), shear=0, noise_std=0)
    y = aug(x)
    # A circular (fractional) shift with linear interpolation preserves the sum of the signal
    # and cannot widen its range; a crop or a non-circular shift would do neither.
    torch.testing.assert_close(y.sum(-1), x.sum(-1), atol=1e-4, rtol=1e-4)
    assert (y.amax(-1) <= x.amax(-1) + 1e-5).all() and (y.amin(-1) >= x.amin(-1) - 1e-5).all()
    assert not torch.allclose(y, x)


def test_augment_reproducible_with_generator() -> None:
    x = torch.randn(8, 1, 40)
    a = SignalAugment()(x, torch.Generator().manual_seed(3))
    b = SignalAugment()(x, torch.Generator().manual_seed(3))
    c = SignalAugment()(x, torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_image_augment_keeps_shape() -> None:
    x = torch.rand(5, 1, 8, 8)
    y = ImageBatchAugment()(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    ident = ImageBatchAugment(scale=(1, 1), rotation=0, translate=0, shear=0, brightness=0,
                              contrast=(1, 1), noise_std=0)
    torch.testing.assert_close(ident(x), x, atol=1e-5, rtol=0)
