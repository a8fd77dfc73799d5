"""Users' image data: torchvision ImageFolder and CIFAR-10/100, with lightly's MoCo v2 views.

CIFAR is downloaded only when the recipe says ``download: true``; a missing path is a clear
error naming it, never a stack trace from inside torchvision.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from contrastmix.errors import DatasetError

__all__ = [
    "DatasetError",
    "build_image_dataset",
    "two_view_transform",
    "eval_transform",
    "IndexedDataset",
]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class IndexedDataset(Dataset):
    """Wrap a ``(x, y)`` dataset to yield ``(transform(x), y, index)``."""

    def __init__(self, base: Dataset, transform: Callable[[Any], Any] | None = None) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        x, y = self.base[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(y), i


def _stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return (CIFAR_MEAN, CIFAR_STD) if name.startswith("cifar") else (IMAGENET_MEAN, IMAGENET_STD)


def two_view_transform(name: str, image_size: int) -> Callable[[Any], list[Tensor]]:
    """lightly's MoCo v2 two-view transform with the dataset's normalisation.

    Args:
        name: Dataset name (``cifar10``, ``cifar100``, ``imagefolder``).
        image_size: Output crop size.

    Returns:
        A callable mapping a PIL image to ``[view1, view2]`` tensors ``[3, S, S]``.
    """
    from lightly.transforms import MoCoV2Transform

    mean, std = _stats(name)
    small = image_size <= 64
    return MoCoV2Transform(
        input_size=image_size,
        gaussian_blur=0.0 if small else 0.5,
        normalize={"mean": mean, "std": std},
    )


def eval_transform(name: str, image_size: int) -> Callable[[Any], Tensor]:
    """Deterministic test-time transform (resize + centre crop for folders, none for CIFAR)."""
    import torchvision.transforms as T

    mean, std = _stats(name)
    ops: list[Any] = []
    if not name.startswith("cifar"):
        ops += [T.Resize(int(round(image_size * 1.14))), T.CenterCrop(image_size)]
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


def build_image_dataset(
    name: str, root: str | None, split: str, *, download: bool = False
) -> Dataset:
    """Build the raw ``(PIL image, label)`` dataset for ``name``.

    Args:
        name: ``cifar10``, ``cifar100`` or ``imagefolder``.
        root: Data directory. For ``imagefolder`` it must contain ``train/`` and ``test/`` (or
            ``val/``) class folders.
        split: ``"train"`` or ``"test"``.
        download: Allow torchvision to download CIFAR (only when the recipe says so).

    Raises:
        DatasetError: unknown name, missing ``root``, missing split folder, CIFAR not present
            and ``download`` false.
    """
    if root is None:
        raise DatasetError(f"data.root must be set for dataset {name!r}")
    path = Path(root).expanduser()
    if not path.exists() and not (name.startswith("cifar") and download):
        raise DatasetError(f"dataset path does not exist: {path}")
    if name in ("cifar10", "cifar100"):
        import torchvision.datasets as D

        cls = D.CIFAR10 if name == "cifar10" else D.CIFAR100
        try:
            return cls(str(path), train=split == "train", download=download)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
            raise DatasetError(
                f"{name} not found under {path} ({e}); set data.download=true to fetch it"
            ) from None
    if name == "imagefolder":
        import torchvision.datasets as D

        sub = path / split
        if split == "test" and not sub.exists() and (path / "val").exists():
            sub = path / "val"
        if not sub.is_dir():
            raise DatasetError(
                f"image folder split not found: {sub} (expected {path}/train and {path}/test "
                "or {path}/val, one sub-folder per class)"
            )
        try:
            return D.ImageFolder(str(sub))
        except (FileNotFoundError, RuntimeError) as e:
            raise DatasetError(f"cannot read image folder {sub}: {e}") from None
    raise DatasetError(f"unknown image dataset {name!r}")


def stack_views(batch: list[tuple[Any, int, int]]) -> tuple[Any, Tensor, Tensor]:
    """Collate ``(views, y, idx)`` items where views is a list of tensors."""
    xs, ys, idx = zip(*batch, strict=True)
    if isinstance(xs[0], (list, tuple)):
        views: Any = [torch.stack([v[i] for v in xs]) for i in range(len(xs[0]))]
    else:
        views = torch.stack(list(xs))
    return views, torch.tensor(ys), torch.tensor(idx)
