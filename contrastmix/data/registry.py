"""The dataset registry: ``data.name`` of a recipe -> a builder returning a
:class:`~contrastmix.data.bundle.DataBundle`.

:data:`DATASETS` lists the built-in datasets explicitly; :func:`register_dataset` adds one from
user code (``contrastmix pretrain RECIPE --import MODULE``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from contrastmix.data.bundle import (
    DataBundle,
    TensorIndexDataset,
    dataset_options,
    image_augment,
    signal_augment,
)
from contrastmix.data.bundles_builtin import build_digits, build_images, build_mnist1d
from contrastmix.data.bundles_multimodal import build_digits_captions, build_digits_tri
from contrastmix.data.bundles_regression import (
    build_diabetes,
    build_mnist1d_reg,
    build_rotated_digits,
)
from contrastmix.data.bundles_user import build_arrays, build_table
from contrastmix.data.image_text_csv import build_image_text_csv
from contrastmix.errors import DatasetError

__all__ = ["TensorIndexDataset", "DataBundle", "build_data", "register_dataset", "datasets",
           "DATASETS", "dataset_options", "image_augment", "signal_augment"]

#: Built-in and registered datasets: ``data.name`` -> ``builder(data_cfg) -> DataBundle``.
DATASETS: dict[str, Callable[[Any], DataBundle]] = {
    "mnist1d": build_mnist1d,
    "digits": build_digits,
    "cifar10": build_images,
    "cifar100": build_images,
    "imagefolder": build_images,
    "rotated-digits": build_rotated_digits,
    "mnist1d-reg": build_mnist1d_reg,
    "diabetes": build_diabetes,
    "digits-captions": build_digits_captions,
    "digits-tri": build_digits_tri,
    "table": build_table,
    "arrays": build_arrays,
    "image-text-csv": build_image_text_csv,
}


def register_dataset(name: str, builder: Callable[[Any], DataBundle]) -> None:
    """Register ``builder(data_cfg) -> DataBundle`` under ``data.name == name``."""
    DATASETS[name] = builder


def datasets() -> list[str]:
    """Names of the registered datasets."""
    return sorted(DATASETS)


def build_data(cfg: Any) -> DataBundle:
    """Build the :class:`DataBundle` for ``cfg`` (a recipe's ``data`` section).

    Raises:
        DatasetError: unknown dataset name or missing path.
    """
    if cfg.name not in DATASETS:
        raise DatasetError(
            f"unknown dataset '{cfg.name}'; choose one of {', '.join(datasets())}"
        )
    return DATASETS[cfg.name](cfg)
