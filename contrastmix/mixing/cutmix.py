"""CutMix of a batch with a permutation of itself (docs/methods.md §10.2).

Yun, Han, Oh, Chun, Choe & Yoo, "CutMix: Regularization Strategy to Train Strong Classifiers
with Localizable Features", ICCV 2019.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastmix.mixing._batch import check_batch, draw_lam, permutation

__all__ = ["cutmix_batch"]


def cutmix_batch(
    x: Tensor, y: Tensor, alpha: float = 1.0, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor, float]:
    """CutMix of a batch with a permutation of itself.

    A box of every spatial dimension (a segment for ``[B, C, L]`` signals, a rectangle for
    ``[B, C, H, W]`` images) with volume share ``~ 1 - lam0``, ``lam0 ~ Beta(alpha, alpha)``,
    and a uniformly drawn centre (clipped at the borders) is replaced by the same box of
    ``x[perm]``; ``lam`` is then corrected to the share of ``x`` actually kept. One box,
    ``lam0`` and permutation per batch.

    Args:
        x: ``[B, C, *spatial]`` floating inputs (1 to 3 spatial dimensions).
        y: ``[B]`` integer labels.
        alpha: Beta concentration (> 0).
        generator: Optional generator (CPU, or ``x``'s device; the box is drawn on it and read
            on the host, so a CPU generator keeps the step free of host synchronisation).

    Returns:
        ``(x_mix [B, C, *spatial], y_a = y, y_b = y[perm], lam)`` with ``lam`` = share of
        entries from ``x``.

    Raises:
        ValueError: ``x`` without spatial dimensions (tabular ``[B, F]``), mismatched lengths,
            ``alpha <= 0``.
    """
    x, y = check_batch(x, y)
    if x.ndim < 3:
        raise ValueError(
            f"`x` must be [B, C, *spatial] for CutMix, got shape {tuple(x.shape)} "
            "(use input mixup for tabular data)"
        )
    lam0 = draw_lam(alpha, generator)
    perm = permutation(x.shape[0], x.device, generator)
    spatial = x.shape[2:]
    side = (1.0 - lam0) ** (1.0 / len(spatial))  # share of each side covered by the box
    gdev = generator.device if generator is not None else torch.device("cpu")
    centres = torch.rand(len(spatial), generator=generator, device=gdev).tolist()
    slices: list[slice] = [slice(None), slice(None)]
    kept = 1.0
    for size, c in zip(spatial, centres, strict=True):
        half = side * size / 2.0
        mid = c * size
        lo, hi = int(round(max(0.0, mid - half))), int(round(min(float(size), mid + half)))
        slices.append(slice(lo, hi))
        kept *= (hi - lo) / size
    out = x.clone()
    idx = tuple(slices)
    out[idx] = x[perm][idx]
    return out, y, y[perm], 1.0 - kept
