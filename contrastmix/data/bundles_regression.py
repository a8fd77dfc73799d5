"""Dataset builders of the regression recipes (listed in
:data:`contrastmix.data.registry.DATASETS`).

* ``rotated-digits`` — predict the rotation angle of a digit image
  (:func:`contrastmix.data.rotated_digits.load_rotated_digits`). ``data.options``:
  ``long_tailed`` (bool, skewed training angles; test stays uniform), ``imbalance_ratio``,
  ``test_fraction``. Test samples are grouped many/medium/few-shot by the number of training
  labels in their 3-degree bin (:func:`~contrastmix.data.shots.shot_groups` with
  :data:`~contrastmix.data.rotated_digits.SHOT_SETTINGS`).
  Views: :class:`~contrastmix.data.augment2d.ImageBatchAugment` from ``data.image_aug``, but
  **rotation and shear are forced to 0** (both change the apparent angle, i.e. the target).
* ``mnist1d-reg`` — predict a generation factor of an MNIST-1D signal
  (:func:`contrastmix.data.mnist1d_reg.load_mnist1d_reg`). ``data.options``: ``target``
  (``time_scale`` | ``shift``), ``num_samples``, ``test_fraction``, ``target_range``,
  ``preserve_target`` (default true). Views: :class:`~contrastmix.data.augment1d.SignalAugment`
  from ``data.signal_aug``; with ``preserve_target`` the augmentations that change the target
  are switched off: the random resized crop in time (``crop_scale -> [1, 1]``; it rescales
  *and* shifts the signal) for both targets, and the circular shift for ``target: shift``.
* ``diabetes`` — the 442-patient table (:func:`contrastmix.data.diabetes.load_diabetes_reg`).
  ``data.options``: ``test_fraction``, ``standardize_target``, ``noise_std``, ``dropout``.
  Views: :class:`~contrastmix.data.tabular_augment.TabularAugment` (already
  ``(x, generator=None)``, like the other batch augmentations). ``in_channels`` is the
  number of features (10), for the ``mlp`` backbone.

The split (and, for the synthetic sets, the generated data) is fixed by ``data.seed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from torch import Tensor

from contrastmix.data.bundle import (
    DataBundle,
    TensorIndexDataset,
    dataset_options,
    image_augment,
    signal_augment,
)
from contrastmix.errors import DatasetError

__all__ = [
    "build_rotated_digits",
    "build_mnist1d_reg",
    "build_diabetes",
    "REGRESSION_DATASETS",
]

#: Names registered by this module.
REGRESSION_DATASETS: tuple[str, ...] = ("rotated-digits", "mnist1d-reg", "diabetes")

log = logging.getLogger(__name__)


def _load_splits(name: str, load: Callable[..., tuple[Tensor, Tensor]], kw: dict[str, Any]
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)`` from ``load(split, **kw)``; a ``ValueError`` of
    the loader becomes a :class:`DatasetError` naming the dataset."""
    try:
        xtr, ytr = load("train", **kw)
        xte, yte = load("test", **kw)
    except ValueError as e:
        raise DatasetError(f"{name}: {e}") from None
    return xtr, ytr, xte, yte


def build_rotated_digits(cfg: Any) -> DataBundle:
    """``rotated-digits``: 16x16 digit images, target = rotation angle in ``[0, 90)`` degrees."""
    from contrastmix.data.rotated_digits import SHOT_SETTINGS, load_rotated_digits
    from contrastmix.data.shots import SHOT_NAMES, shot_groups

    o = dataset_options(
        cfg, {"long_tailed": False, "imbalance_ratio": 100.0, "test_fraction": 0.25}
    )
    kw = {"seed": int(cfg.seed), "long_tailed": bool(o["long_tailed"]),
          "imbalance_ratio": float(o["imbalance_ratio"]),
          "test_fraction": float(o["test_fraction"])}
    xtr, ytr, xte, yte = _load_splits("rotated-digits", load_rotated_digits, kw)
    if cfg.image_aug.rotation != 0 or cfg.image_aug.shear != 0:
        log.info("rotated-digits: rotation/shear augmentation disabled (they change the target)")
    aug = image_augment(cfg, rotation=0.0, shear=0.0)
    train = TensorIndexDataset(xtr, ytr)
    return DataBundle(
        pretrain=train, train=train, test=TensorIndexDataset(xte, yte), batch_augment=aug,
        in_channels=1, num_classes=0, task="regression",
        test_groups=shot_groups(ytr, yte, **SHOT_SETTINGS),
        group_names=tuple(SHOT_NAMES),
    )


def build_mnist1d_reg(cfg: Any) -> DataBundle:
    """``mnist1d-reg``: 40-sample MNIST-1D signals, target = time scale or shift."""
    from contrastmix.data.mnist1d_reg import load_mnist1d_reg

    o = dataset_options(cfg, {"target": "time_scale", "num_samples": 5000,
                              "test_fraction": 0.2, "target_range": None,
                              "preserve_target": True})
    tr = o["target_range"]
    kw = {"seed": int(cfg.seed), "target": str(o["target"]),
          "num_samples": int(o["num_samples"]), "test_fraction": float(o["test_fraction"]),
          "target_range": None if tr is None else (float(tr[0]), float(tr[1]))}
    xtr, ytr, xte, yte = _load_splits("mnist1d-reg", load_mnist1d_reg, kw)
    override: dict[str, Any] = {}
    if o["preserve_target"]:
        override["crop_scale"] = (1.0, 1.0)  # a resized crop dilates and translates the signal
        if kw["target"] == "shift":
            override["max_shift"] = 0.0
    aug = signal_augment(cfg, **override)
    train = TensorIndexDataset(xtr, ytr)
    return DataBundle(
        pretrain=train, train=train, test=TensorIndexDataset(xte, yte), batch_augment=aug,
        in_channels=1, num_classes=0, task="regression",
    )


def build_diabetes(cfg: Any) -> DataBundle:
    """``diabetes``: 10 standardised features, target = disease progression (25..346)."""
    from contrastmix.data.diabetes import DIABETES_FEATURES, load_diabetes_reg
    from contrastmix.data.tabular_augment import TabularAugment

    o = dataset_options(cfg, {"test_fraction": 0.25, "standardize_target": False,
                              "noise_std": 0.1, "dropout": 0.1})
    kw = {"seed": int(cfg.seed), "test_fraction": float(o["test_fraction"]),
          "standardize_target": bool(o["standardize_target"])}
    xtr, ytr, xte, yte = _load_splits("diabetes", load_diabetes_reg, kw)
    try:
        aug = TabularAugment(noise_std=float(o["noise_std"]), dropout=float(o["dropout"]))
    except ValueError as e:
        raise DatasetError(f"diabetes: {e}") from None
    train = TensorIndexDataset(xtr, ytr)
    return DataBundle(
        pretrain=train, train=train, test=TensorIndexDataset(xte, yte), batch_augment=aug,
        in_channels=DIABETES_FEATURES, num_classes=0, task="regression",
    )
