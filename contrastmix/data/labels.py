"""Label helpers for regression data: a dataset's targets and equal-width label bins.

Core code (no Lightning): the regression methods use these to standardise targets, to draw
C-Mixup partners over the training set and to bin labels (positives = same bin).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["dataset_labels", "label_bin_edges"]


def dataset_labels(ds: Any) -> Tensor:
    """The ``[N]`` float labels (on the CPU) of a dataset yielding ``(x, y, idx)``.

    Reads ``ds.y`` when the dataset holds its labels in memory as a tensor, otherwise indexes
    every sample once.
    """
    y = getattr(ds, "y", None)
    if isinstance(y, Tensor):
        return y.detach().float().reshape(-1).cpu()
    return torch.tensor([float(ds[i][1]) for i in range(len(ds))])


def label_bin_edges(labels: Tensor, num_bins: int, bin_range: Sequence[float] | None) -> Tensor:
    """Inner edges of ``num_bins`` equal-width label bins, for ``torch.bucketize``.

    Args:
        labels: ``[N]`` labels; their min and max span the bins when ``bin_range`` is empty
            (a constant label gets bins over ``[y, y + 1]``).
        num_bins: Number of bins (>= 1).
        bin_range: ``[low, high]`` with ``high > low``, or empty / ``None``.

    Returns:
        ``[num_bins - 1]`` float64 inner edges; ``torch.bucketize(y, edges, right=True)`` gives
        bin ids ``0 .. num_bins - 1`` (labels outside the range fall in the end bins).

    Raises:
        ValueError: ``num_bins < 1`` or a ``bin_range`` that is not ``[low, high]``.
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    if bin_range:
        if len(bin_range) != 2 or not bin_range[1] > bin_range[0]:
            raise ValueError(f"bin_range must be [low, high] with high > low, got {bin_range}")
        low, high = float(bin_range[0]), float(bin_range[1])
    else:
        low, high = float(labels.min()), float(labels.max())
        if not high > low:
            high = low + 1.0
    return torch.linspace(low, high, num_bins + 1, dtype=torch.float64)[1:-1]
