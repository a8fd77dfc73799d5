"""scikit-learn's diabetes table as a small tabular regression task, offline.

Efron, Hastie, Johnstone & Tibshirani, "Least Angle Regression", Annals of Statistics 2004:
442 patients, 10 baseline features (age, sex, BMI, blood pressure, six serum measurements),
target = a quantitative measure of disease progression one year later (25..346).

Features are the *raw* values (``load_diabetes(scaled=False)``) standardised with the mean and
standard deviation of the training split only; the target is returned in its original units
(so MAE is comparable with the literature) unless ``standardize_target``. Pair it with
:class:`contrastmix.models.mlp.MLPEncoder` and
:class:`contrastmix.data.tabular_augment.TabularAugment`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["load_diabetes_reg", "DIABETES_FEATURES"]

DIABETES_FEATURES = 10


def load_diabetes_reg(
    split: str = "train",
    seed: int = 0,
    *,
    test_fraction: float = 0.25,
    standardize_target: bool = False,
) -> tuple[Tensor, Tensor]:
    """Load a seeded train/test split of the diabetes table.

    Args:
        split: ``"train"`` or ``"test"``.
        seed: Split seed (same split for the same seed).
        test_fraction: Share of the 442 rows in the test split.
        standardize_target: Also standardise the target with train statistics.

    Returns:
        ``x [N, 10]`` float32 standardised features and ``y [N]`` float32 targets.
    """
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    x, y = load_diabetes(return_X_y=True, scaled=False)
    tr, te = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed)
    mean, std = x[tr].mean(axis=0), x[tr].std(axis=0)
    sel = tr if split == "train" else te
    xs = (x[sel] - mean) / np.where(std > 0, std, 1.0)
    ys = y[sel]
    if standardize_target:
        ys = (ys - y[tr].mean()) / y[tr].std()
    return torch.from_numpy(xs.astype(np.float32)), torch.from_numpy(ys.astype(np.float32))
