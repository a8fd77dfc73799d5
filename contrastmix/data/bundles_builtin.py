"""Builders of the built-in classification datasets (MNIST-1D, digits) and of users' image
data (CIFAR-10/100, image folders)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset

from contrastmix.data.bundle import (
    DataBundle,
    TensorIndexDataset,
    dataset_options,
    image_augment,
    signal_augment,
)
from contrastmix.errors import DatasetError

__all__ = ["build_mnist1d", "build_digits", "build_images"]


def build_mnist1d(cfg: Any) -> DataBundle:
    """MNIST-1D regenerated offline (``data.seed``), plus an optional unlabelled pool."""
    from contrastmix.data.mnist1d import load_mnist1d, load_mnist1d_pool

    xtr, ytr = load_mnist1d("train", seed=cfg.seed)
    xte, yte = load_mnist1d("test", seed=cfg.seed)
    train = TensorIndexDataset(xtr, ytr)
    pretrain: Dataset = train
    if len(cfg.pool_seeds) > 0:
        pool = load_mnist1d_pool(list(cfg.pool_seeds), exclude=cfg.seed)
        pool_ds = TensorIndexDataset(
            pool, torch.full((len(pool),), -1, dtype=torch.long), offset=len(train)
        )
        pretrain = ConcatDataset([train, pool_ds])
    return DataBundle(pretrain, train, TensorIndexDataset(xte, yte), signal_augment(cfg), 1, 10)


def build_digits(cfg: Any) -> DataBundle:
    """scikit-learn's 8x8 digits as 1-channel images, split with ``data.seed``."""
    from contrastmix.data.digits import load_digits_images

    xtr, ytr = load_digits_images("train", seed=cfg.seed)
    xte, yte = load_digits_images("test", seed=cfg.seed)
    train = TensorIndexDataset(xtr, ytr)
    return DataBundle(train, train, TensorIndexDataset(xte, yte), image_augment(cfg), 1, 10)


def build_images(cfg: Any) -> DataBundle:
    """CIFAR-10/100 (torchvision's format under ``data.root``) or an image folder, labelled
    (``train/<class>/``, ``test/<class>/``) or not (any other folder of images; see
    :func:`contrastmix.data.images.scan_image_folder`). ``data.options`` of ``imagefolder``:
    ``verify`` (true: check every image with PIL when the dataset is built)."""
    from contrastmix.data.images import (
        IndexedDataset,
        build_image_dataset,
        eval_transform,
        scan_image_folder,
        stack_views,
        two_view_transform,
    )

    name = cfg.name
    extras: dict[str, Any] | None = None
    if name == "imagefolder":
        o = dataset_options(cfg, {"verify": True})
        if cfg.root is None:
            raise DatasetError(
                "data.root must be set for dataset 'imagefolder' (a folder of images; e.g. "
                "--set data.root=DIR)")
        base_tr, base_te = scan_image_folder(cfg.root, verify=bool(o["verify"]))
        n_cls = len(base_tr.classes)
        if n_cls == 0:
            extras = {"unlabelled": (
                f"{cfg.root} has no labels (no train/<class>/ and test/<class>/ folders): "
                "pretraining works without them, evaluation needs them; evaluate on a labelled "
                "image folder with --set data.root=LABELLED_DIR (train/<class>/..., "
                "test/<class>/...)")}
    else:
        base_tr = build_image_dataset(name, cfg.root, "train", download=cfg.download)
        base_te = build_image_dataset(name, cfg.root, "test", download=cfg.download)
        n_cls = len(getattr(base_tr, "classes", [])) or (100 if name == "cifar100" else 10)
    ev = eval_transform(name, cfg.image_size)
    return DataBundle(
        pretrain=IndexedDataset(base_tr, two_view_transform(name, cfg.image_size)),
        train=IndexedDataset(base_tr, ev),
        test=IndexedDataset(base_te, ev),
        batch_augment=None,
        in_channels=3,
        num_classes=n_cls,
        collate_fn=stack_views,
        extras=extras,
    )
