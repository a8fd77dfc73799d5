"""scikit-learn's handwritten digits (8x8 grey images, 1797 samples, 10 classes), offline."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["load_digits_images"]


def load_digits_images(
    split: str = "train", *, seed: int = 0, test_fraction: float = 0.25
) -> tuple[Tensor, Tensor]:
    """Load a stratified, seeded train/test split of scikit-learn's digits.

    Args:
        split: ``"train"`` or ``"test"``.
        seed: Split seed.
        test_fraction: Share of samples in the test split.

    Returns:
        ``x [N, 1, 8, 8]`` float32 in ``[0, 1]`` and ``y [N]`` int64.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    idx = np.arange(len(d.target))
    tr, te = train_test_split(
        idx, test_size=test_fraction, random_state=seed, stratify=d.target
    )
    sel = tr if split == "train" else te
    x = torch.from_numpy(d.images[sel].astype(np.float32) / 16.0).unsqueeze(1)
    return x, torch.from_numpy(d.target[sel].astype(np.int64))
