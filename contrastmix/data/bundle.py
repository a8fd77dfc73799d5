"""What a training run and its evaluation need from a dataset: :class:`DataBundle`, and the
pieces the dataset builders share (in-memory datasets, options, on-device augmentations).

Every dataset yields ``(x, y, index)``. In-memory datasets (MNIST-1D, digits) yield raw tensors
and the training module applies a batched augmentation twice on the device
(:attr:`DataBundle.batch_augment`); PIL datasets (CIFAR, ImageFolder) yield the two views from
lightly's per-sample transform.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset

from contrastmix.errors import DatasetError

__all__ = ["TensorIndexDataset", "DataBundle", "dataset_options", "image_augment",
           "signal_augment"]


class TensorIndexDataset(Dataset):
    """In-memory ``(x[i], y[i], offset + i)`` dataset."""

    def __init__(self, x: Tensor, y: Tensor, offset: int = 0) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self.x, self.y, self.offset = x, y, offset

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        return self.x[i], self.y[i], self.offset + i


@dataclass
class DataBundle:
    """What a training run and its evaluation need from a dataset.

    Attributes:
        pretrain: Pretraining set (labelled train split plus any unlabelled pool, label -1).
        train: Labelled train split with test-time transforms (probe / kNN bank).
        test: Test split with test-time transforms.
        batch_augment: On-device batched view augmentation for in-memory data, else ``None``
            (then ``pretrain`` already yields ``[view1, view2]``).
        in_channels: Input channels (the number of input features for tabular data).
        num_classes: Number of classes (0 for regression).
        task: ``"classification"``, ``"regression"`` or ``"multimodal"``.
        collate_fn: Collate function for ``pretrain`` (``None`` = default).
        test_groups: Optional ``[M]`` group id of each test sample (e.g. many/medium/few-shot
            bins of an imbalanced regression set); the probe reports metrics per group.
        group_names: Names of the group ids.
        extras: Anything else a family's probe needs (class prompts, modalities, ...).
    """

    pretrain: Dataset
    train: Dataset
    test: Dataset
    batch_augment: Callable[..., Tensor] | None
    in_channels: int
    num_classes: int
    task: str = "classification"
    collate_fn: Callable[[list[Any]], Any] | None = None
    test_groups: Tensor | None = None
    group_names: tuple[str, ...] = ()
    extras: dict[str, Any] | None = None


def dataset_options(cfg: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` updated with the recipe's ``data.options`` for one dataset.

    Raises:
        DatasetError: an option the dataset does not know, or a ``test_fraction`` outside
            ``(0, 1)``.
    """
    given = dict(cfg.options or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise DatasetError(
            f"unknown data.options for dataset '{cfg.name}': {', '.join(unknown)}; "
            f"known: {', '.join(sorted(defaults))}"
        )
    out = {**defaults, **given}
    tf = out.get("test_fraction", 0.5)
    if not isinstance(tf, (int, float)) or not 0.0 < float(tf) < 1.0:
        raise DatasetError(f"data.options.test_fraction must lie in (0, 1), got {tf!r}")
    return out


def image_augment(cfg: Any, **override: Any) -> Any:
    """The on-device :class:`~contrastmix.data.augment2d.ImageBatchAugment` of
    ``cfg.image_aug``; ``override`` replaces arguments (e.g. ``rotation=0.0``)."""
    from contrastmix.data.augment2d import ImageBatchAugment

    a = cfg.image_aug
    kw: dict[str, Any] = {
        "scale": (a.scale[0], a.scale[1]), "rotation": a.rotation, "translate": a.translate,
        "shear": a.shear, "brightness": a.brightness,
        "contrast": (a.contrast[0], a.contrast[1]), "noise_std": a.noise_std,
    }
    return ImageBatchAugment(**{**kw, **override})


def signal_augment(cfg: Any, **override: Any) -> Any:
    """The on-device :class:`~contrastmix.data.augment1d.SignalAugment` of ``cfg.signal_aug``;
    ``override`` replaces arguments (e.g. ``max_shift=0.0``)."""
    from contrastmix.data.augment1d import SignalAugment

    a = cfg.signal_aug
    kw: dict[str, Any] = {
        "crop_scale": (a.crop_scale[0], a.crop_scale[1]), "max_shift": a.max_shift,
        "amplitude": (a.amplitude[0], a.amplitude[1]), "shear": a.shear,
        "noise_std": a.noise_std, "flip_prob": a.flip_prob,
    }
    return SignalAugment(**{**kw, **override})
