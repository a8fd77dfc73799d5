"""MNIST-1D (Greydanus & Kobak, "Scaling down deep learning with MNIST-1D", ICML 2024 / 2020).

The data is *regenerated* with the ``mnist1d`` package's own generator
(``mnist1d.data.make_dataset`` at ``get_dataset_args()`` defaults: 4000 train / 1000 test signals
of length 40, 10 classes, seed 42) — never downloaded. Generated arrays are cached as ``.npz``.

An optional unlabelled *pretraining pool* is generated the same way from other seeds (each seed
contributes its 5000 signals); those signals are new random transformations of the templates,
disjoint from the labelled test split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from contrastmix._atomic import atomic_open
from contrastmix.data.cache import cache_dir

__all__ = ["load_mnist1d", "load_mnist1d_pool", "MNIST1D_LENGTH", "MNIST1D_CLASSES"]

MNIST1D_LENGTH = 40
MNIST1D_CLASSES = 10


def _generate(seed: int) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    key = hashlib.sha1(
        json.dumps({k: v for k, v in vars(args).items() if k != "url"}, sort_keys=True).encode()
    ).hexdigest()[:12]
    path = cache_dir() / f"mnist1d_seed{seed}_{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    # make_dataset reseeds numpy's and random's global RNGs; keep the caller's state intact.
    import random

    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    out = {
        "x": d["x"].astype(np.float32),
        "y": d["y"].astype(np.int64),
        "x_test": d["x_test"].astype(np.float32),
        "y_test": d["y_test"].astype(np.int64),
    }
    with atomic_open(path, "wb") as fh:  # concurrent runs may build the same cache
        np.savez(fh, **out)
    return out


def load_mnist1d(split: str = "train", *, seed: int = 42) -> tuple[Tensor, Tensor]:
    """Load the labelled MNIST-1D split.

    Args:
        split: ``"train"`` (4000 signals) or ``"test"`` (1000 signals).
        seed: Generator seed (42 = the published dataset).

    Returns:
        ``x [N, 1, 40]`` float32 signals (dataset-standardised as the generator does) and
        ``y [N]`` int64 labels in ``0..9``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = _generate(seed)
    x, y = (d["x"], d["y"]) if split == "train" else (d["x_test"], d["y_test"])
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)


def load_mnist1d_pool(seeds: Sequence[int], *, exclude: int = 42) -> Tensor:
    """Unlabelled MNIST-1D signals from other generator seeds, for pretraining only.

    Args:
        seeds: Generator seeds; each contributes 5000 signals.
        exclude: The labelled dataset's seed, refused here so the pool never holds test signals.

    Returns:
        ``x [5000 * len(seeds), 1, 40]`` float32.
    """
    if exclude in seeds:
        raise ValueError(
            f"pool seed {exclude} is the labelled dataset's seed; its test split would leak into "
            "pretraining"
        )
    parts = []
    for s in seeds:
        d = _generate(int(s))
        parts.append(np.concatenate([d["x"], d["x_test"]]))
    if not parts:
        return torch.empty(0, 1, MNIST1D_LENGTH)
    return torch.from_numpy(np.concatenate(parts)).unsqueeze(1)
