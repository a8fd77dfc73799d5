"""Users' image data: image folders and CIFAR-10/100, with lightly's MoCo v2 views.

CIFAR is downloaded only when the recipe says ``download: true``; a missing path is a clear
error naming it, never a stack trace from inside torchvision.

An image folder (``data.root``) is read in one of two layouts (:func:`scan_image_folder`):

* **labelled**: ``train/<class>/...`` and ``test/<class>/...`` (or ``val/<class>/...``); the
  classes are the sub-folders of ``train/`` (sorted names), images may sit in nested folders
  inside a class folder;
* **unlabelled**: any folder without a ``train/`` sub-folder: every image under it (flat or
  nested; folder names are not labels) is a pretraining sample with label ``-1``.

The folder is listed with :class:`~contrastmix.data._files.SafeLister` (links never leave
``data.root``, never loop, nothing is listed twice) and every image is checked once with PIL
(``Image.verify()``, no decoding) when the dataset is built: unreadable files, files that are
not images and skipped links are left out and reported in ONE warning that counts them and
names the first few. An image that still fails when it is loaded (changed since, or damaged in
a way ``verify`` does not see) stops with a :class:`DatasetError` naming the file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from contrastmix.data._files import IMAGE_EXTENSIONS, SafeLister, check_image, error_reason
from contrastmix.errors import DatasetError

__all__ = [
    "DatasetError",
    "build_image_dataset",
    "scan_image_folder",
    "ImageFiles",
    "load_image",
    "two_view_transform",
    "eval_transform",
    "IndexedDataset",
]

log = logging.getLogger(__name__)

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

    @property
    def y(self) -> Tensor | None:
        """``[N]`` labels when the base dataset lists them (``targets``), without loading
        any image; else ``None``."""
        t = getattr(self.base, "targets", None)
        return None if t is None else torch.as_tensor(t)


def load_image(path: Path) -> Any:
    """The RGB PIL image in ``path``.

    Raises:
        DatasetError: the file cannot be read as an image (naming it and why).
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:  # OSError (truncated, missing), SyntaxError, DecompressionBomb...
        raise DatasetError(f"cannot read image {path}: {error_reason(e)}") from None


class ImageFiles(Dataset):
    """``(PIL RGB image, label)`` of a list of image files (label ``-1``: unlabelled).

    Args:
        files: The image paths.
        targets: One class index per file (``-1`` for unlabelled images).
        classes: Class names, index ``i`` is ``classes[i]`` (empty when unlabelled).
    """

    def __init__(self, files: list[Path], targets: list[int], classes: list[str]) -> None:
        if len(files) != len(targets):
            raise ValueError(f"{len(files)} files but {len(targets)} targets")
        self.files, self.targets, self.classes = list(files), list(targets), list(classes)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return load_image(self.files[i]), self.targets[i]


def _keep_image(verify: bool) -> Callable[[Path], tuple[str, str] | None]:
    def keep(path: Path) -> tuple[str, str] | None:
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            return "files that are not images", ""
        if verify:
            why = check_image(path)
            if why:
                return "unreadable images", why
        return None

    return keep


def _class_folders(lister: SafeLister, split: Path, classes: list[str] | None) -> list[Path]:
    """The class folders of ``split`` (sorted); ``classes`` (of train) must hold every test
    class."""
    if lister.inside(split) is None:
        raise DatasetError(f"{split} leaves the data root {lister.root} (a link); "
                           "links may only point inside data.root")
    subs, loose = lister.folders(split)
    for p in loose:
        lister.skipped.add("files outside a class folder", p)
    if not subs:
        raise DatasetError(
            f"{split} has no class folders (expected {split}/<class>/<image>; for images "
            f"without classes, point data.root at a folder that has no train/ sub-folder)"
        )
    if classes is not None:
        extra = [p.name for p in subs if p.name not in classes]
        if extra:
            raise DatasetError(
                f"{split} has class folder '{extra[0]}', which {split.parent}/train lacks "
                f"(train classes: {', '.join(classes)}); every test class must be trained on"
            )
    return subs


def _left_out(lister: SafeLister) -> str:
    return f"; left out: {lister.skipped.summary()}" if len(lister.skipped) else ""


def _labelled_files(lister: SafeLister, subs: list[Path], classes: list[str],
                    every: list[Path], keep: Callable[[Path], Any], train: bool
                    ) -> tuple[list[Path], list[int]]:
    """Files and class indices of the class folders ``subs``; links into any other class
    folder of ``every`` are skipped (their images would take this folder's label)."""
    real = {p: p.resolve() for p in every}
    files: list[Path] = []
    targets: list[int] = []
    for sub in subs:
        fence = [r for p, r in real.items() if r != real[sub]]
        found = lister.files(sub, keep, fence=fence)
        if not found and train:
            raise DatasetError(f"class folder {sub} has no readable images{_left_out(lister)}")
        files += found
        targets += [classes.index(sub.name)] * len(found)
    if not files:
        raise DatasetError(f"{subs[0].parent} has no readable images{_left_out(lister)}")
    return files, targets


def scan_image_folder(root: str | Path, *, verify: bool = True) -> tuple[ImageFiles, ImageFiles]:
    """List (and check) an image folder: the ``(train, test)`` datasets of ``root``.

    Labelled layout (``root/train`` exists): ``train/<class>/...`` and ``test/<class>/...``
    (or ``val/``). Otherwise every image under ``root`` is unlabelled (label ``-1``) and both
    returned datasets are the same list. What is left out (see the module docstring) is
    reported in one warning on the ``contrastmix.data.images`` logger.

    Args:
        root: The data root (``data.root``).
        verify: Check every image with PIL's ``verify()`` (about 0.1 ms a small image);
            ``False`` keeps every file with an image extension.

    Returns:
        ``(train, test)`` :class:`ImageFiles`; ``train.classes`` is empty when unlabelled.

    Raises:
        DatasetError: ``root`` missing or not a folder, no readable images, a labelled layout
            without test split or class folders, a train class folder without images, a test
            class that train lacks.
    """
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset path does not exist: {path}")
    if not path.is_dir():
        raise DatasetError(f"data.root: {path} is not a folder")
    lister = SafeLister(path)
    keep = _keep_image(verify)
    if (path / "train").is_dir():
        test = path / "test"
        if not test.is_dir() and (path / "val").is_dir():
            test = path / "val"
        if not test.is_dir():
            raise DatasetError(
                f"image folder split not found: {test} (expected {path}/train and {path}/test "
                f"or {path}/val, one sub-folder per class)"
            )
        tr_subs = _class_folders(lister, path / "train", None)
        classes = [p.name for p in tr_subs]
        te_subs = _class_folders(lister, test, classes)
        every = tr_subs + te_subs
        tr_files, tr_y = _labelled_files(lister, tr_subs, classes, every, keep, True)
        te_files, te_y = _labelled_files(lister, te_subs, classes, every, keep, False)
        train = ImageFiles(tr_files, tr_y, classes)
        test_ds = ImageFiles(te_files, te_y, classes)
    else:
        files = lister.files(path, keep)
        if not files:
            raise DatasetError(
                f"no readable images under {path} (extensions: {' '.join(IMAGE_EXTENSIONS)})"
                f"{_left_out(lister)}"
            )
        train = test_ds = ImageFiles(files, [-1] * len(files), [])
    n_skipped = len(lister.skipped)
    if n_skipped:
        kept = len(train) + (len(test_ds) if test_ds is not train else 0)
        log.warning("image folder %s: kept %d images, left out %d: %s", path, kept, n_skipped,
                    lister.skipped.summary())
    return train, test_ds


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
        root: Data directory. For ``imagefolder`` see :func:`scan_image_folder` (which
            :func:`~contrastmix.data.bundles_builtin.build_images` calls once for both splits).
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
        train, test = scan_image_folder(path)
        return train if split == "train" else test
    raise DatasetError(f"unknown image dataset {name!r}")


def stack_views(batch: list[tuple[Any, int, int]]) -> tuple[Any, Tensor, Tensor]:
    """Collate ``(views, y, idx)`` items where views is a list of tensors."""
    xs, ys, idx = zip(*batch, strict=True)
    if isinstance(xs[0], (list, tuple)):
        views: Any = [torch.stack([v[i] for v in xs]) for i in range(len(xs[0]))]
    else:
        views = torch.stack(list(xs))
    return views, torch.tensor(ys), torch.tensor(idx)
