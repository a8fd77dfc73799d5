"""Overflow-safe norms and distances for large but finite inputs.

``F.normalize`` and the ``|a|^2 + |b|^2 - 2 a.b`` expansion of squared distances square every
entry first: float32 rows with entries above ~1e19 (fewer with many dimensions) overflow to
``inf`` there, and the result is silently ``0`` (a normalised row) or ``nan`` (a distance). The
helpers here divide by a detached power-of-magnitude scale first when (and only when) an entry
is large enough for that to matter, so ordinary inputs give bit-for-bit the values of the plain
computation, and large ones a finite, correct value with a finite gradient (the scale is a
constant of the computation: ``normalize(x / s) = normalize(x)`` for ``s > 0``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["safe_scale_threshold", "unit_rows", "pairwise_distances_expanded"]


def safe_scale_threshold(dtype: torch.dtype) -> float:
    """Largest entry magnitude computed without rescaling: ``finfo.max ** (1/4)`` of the
    accumulation dtype (fp32 or wider), so that squares summed over up to ``~finfo.max ** 0.5``
    dimensions stay finite (1.4e9 for fp32 / fp16 / bf16, 1.2e77 for fp64)."""
    acc = torch.promote_types(dtype, torch.float32)
    return float(torch.finfo(acc).max) ** 0.25


def _row_scale(x: Tensor, dim: int) -> Tensor:
    """Per-row divisor: the row's largest ``|entry|`` where it exceeds the threshold, else 1."""
    a = x.detach().abs().amax(dim=dim, keepdim=True)
    return torch.where(a > safe_scale_threshold(x.dtype), a, torch.ones_like(a))


def unit_rows(x: Tensor, dim: int = -1, eps: float = 1e-12) -> Tensor:
    """``F.normalize(x, dim=dim, eps=eps)`` that does not overflow for large finite entries.

    Rows whose largest entry exceeds :func:`safe_scale_threshold` are divided by it first
    (detached); other rows are divided by exactly 1, so their result is unchanged.

    Args:
        x: ``[..., d]`` (any shape; ``dim`` is normalised).
        dim: Dimension to normalise.
        eps: ``F.normalize``'s lower bound of the norm.

    Returns:
        Same shape and dtype as ``x``.
    """
    if x.numel() == 0:
        return F.normalize(x, dim=dim, eps=eps)
    return F.normalize(x / _row_scale(x, dim), dim=dim, eps=eps)


def pairwise_distances_expanded(z: Tensor, *, min_sq: float = 1e-12) -> Tensor:
    """Euclidean distances ``[N, N]`` between the rows of ``z [N, d]`` by the expansion
    ``sqrt(clamp(|a|^2 + |b|^2 - 2 a.b, min_sq))``, computed on ``z / s`` and multiplied by
    ``s``; ``s`` (detached) is the largest ``|entry|`` when it exceeds
    :func:`safe_scale_threshold`, else exactly 1 (then the values are those of the plain
    expansion). ``min_sq`` keeps the gradient at coincident rows finite.

    Args:
        z: ``[N, d]`` floating rows.
        min_sq: Lower clamp of the squared distance (in units of ``s``).

    Returns:
        ``[N, N]`` distances, ``z``'s dtype.
    """
    s = z.detach().abs().amax() if z.numel() else z.new_ones(())
    s = torch.where(s > safe_scale_threshold(z.dtype), s, torch.ones_like(s))
    zs = z / s
    sq = zs.pow(2).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (zs @ zs.T)).clamp_min(min_sq)
    return d2.sqrt() * s
