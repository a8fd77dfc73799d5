"""Built-in data (MNIST-1D, digits and their regression / multimodal variants, all offline),
users' image data, and batched augmentations. See :mod:`contrastmix.data.registry`."""

from contrastmix.data.augment1d import SignalAugment
from contrastmix.data.augment2d import ImageBatchAugment
from contrastmix.data.digits import load_digits_images
from contrastmix.data.mnist1d import load_mnist1d, load_mnist1d_pool
from contrastmix.data.registry import DataBundle, build_data, datasets, register_dataset

__all__ = [
    "SignalAugment", "ImageBatchAugment", "load_digits_images", "load_mnist1d",
    "load_mnist1d_pool", "DataBundle", "build_data", "datasets", "register_dataset",
]
