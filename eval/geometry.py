"""Geometry of representations: alignment, uniformity, effective rank, modality gap.

* Alignment and uniformity: Wang & Isola, "Understanding Contrastive Representation Learning
  through Alignment and Uniformity on the Hypersphere", ICML 2020 (docs/methods.md §5).
* Effective rank (RankMe): Garrido, Balestriero, Najman & LeCun, "RankMe: Assessing the
  Downstream Performance of Pretrained Self-Supervised Representations by Their Rank",
  ICML 2023; Roy & Vetterli, "The effective rank", 2007.
* Modality gap: Liang et al., "Mind the Gap: Understanding the Modality Gap in Multi-modal
  Contrastive Representation Learning", NeurIPS 2022.

All functions L2-normalise their inputs by default (``normalize=True``), compute in float64
with autocast disabled and return 0-d float64 tensors that keep the autograd graph, so they
can be logged as metrics (``float(...)``) or used as regularisers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from contrastmix._numerics import unit_rows
from contrastmix._validation import check_positive, check_same_length, check_tensor

__all__ = [
    "alignment",
    "uniformity",
    "effective_rank",
    "modality_gap",
    "multimodal_geometry",
]


def _prep(name: str, x: Tensor, normalize: bool) -> Tensor:
    check_tensor(name, x, ndim=2, floating=True)
    x64 = x.to(torch.float64)
    return unit_rows(x64, dim=1) if normalize else x64


def alignment(x: Tensor, y: Tensor, alpha: float = 2.0, *, normalize: bool = True) -> Tensor:
    """Alignment ``mean_i ||x_i - y_i||^alpha`` of positive pairs (Wang & Isola, 2020).

    Args:
        x: ``[N, d]`` first views.
        y: ``[N, d]`` second views (row ``i`` is the positive of ``x_i``).
        alpha: exponent ``> 0`` (2 by default; the result then lies in ``[0, 4]`` for unit
            vectors).
        normalize: L2-normalise the rows first.

    Returns:
        0-d float64 tensor.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        xn = _prep("x", x, normalize)
        yn = _prep("y", y, normalize)
        if yn.shape[1] != xn.shape[1]:
            raise ValueError(
                f"`y` must have last dimension {xn.shape[1]} like `x`, got {tuple(y.shape)}"
            )
        check_same_length(x=x, y=y)
        check_positive("alpha", alpha)
        if xn.shape[0] == 0:
            raise ValueError("`x` is empty: alignment needs at least one pair")
        diff = xn - yn
        if alpha == 2:
            return diff.pow(2).sum(dim=1).mean()
        # ||d||^alpha = (||d||^2)^(alpha/2); clamp keeps the gradient finite at d = 0.
        return diff.pow(2).sum(dim=1).clamp_min(1e-300).pow(alpha / 2).mean()


def uniformity(
    x: Tensor,
    t: float = 2.0,
    *,
    normalize: bool = True,
    max_samples: int | None = None,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniformity ``log mean_{i<j} exp(-t ||x_i - x_j||^2)`` (Wang & Isola, 2020).

    Exact over all ``N(N-1)/2`` pairs ``i < j``, evaluated as a log-sum-exp in float64 over row
    chunks of ``chunk_size`` rows (memory ``O(chunk_size * N)``; by default
    ``chunk_size * N <= 2**24`` entries, 128 MiB). It is 0 when all points
    coincide and close to ``-t * 2 = -4`` for many points spread uniformly on a
    high-dimensional sphere.

    Args:
        x: ``[N, d]`` features, ``N >= 2``.
        t: scale ``> 0`` (2 by default).
        normalize: L2-normalise the rows first.
        max_samples: if given and ``N > max_samples``, use a uniform random subset of
            ``max_samples`` rows (without replacement, drawn with ``generator``) — an unbiased
            estimate of the mean inside the log, at ``O(max_samples^2)`` cost.
        chunk_size: rows per chunk (default: ``max(1, 2**24 // N)``).
        generator: random generator for the subsample.

    Returns:
        0-d float64 tensor (``<= 0``).

    Raises:
        ValueError: if ``N < 2`` or ``x`` is not finite.
    """
    check_tensor("x", x, ndim=2, floating=True)
    check_positive("t", t)
    if chunk_size is not None:
        check_positive("chunk_size", chunk_size)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"`x` needs at least 2 rows for uniformity, got {n}")
    if max_samples is not None:
        if max_samples < 2:
            raise ValueError(f"`max_samples` must be >= 2, got {max_samples}")
        if n > max_samples:
            gen_device = generator.device if generator is not None else torch.device("cpu")
            perm = torch.randperm(n, generator=generator, device=gen_device)[:max_samples]
            x = x[perm.to(x.device)]
            n = max_samples
    rows = chunk_size if chunk_size is not None else max(1, 2**24 // n)
    with torch.autocast(device_type=x.device.type, enabled=False):
        z = _prep("x", x, normalize)
        sq = z.pow(2).sum(dim=1)
        parts = []
        for s in range(0, n - 1, rows):
            e = min(s + rows, n - 1)
            # pairs (i, j) with s <= i < e and j > i: columns j in [s + 1, n).
            cols = z[s + 1 :]
            d2 = (sq[s:e, None] + sq[None, s + 1 :] - 2.0 * (z[s:e] @ cols.T)).clamp_min(0.0)
            i_idx = torch.arange(s, e, device=z.device)[:, None]
            j_idx = torch.arange(s + 1, n, device=z.device)[None, :]
            vals = torch.masked_select(-t * d2, j_idx > i_idx)
            parts.append(torch.logsumexp(vals, dim=0))
        total = torch.logsumexp(torch.stack(parts), dim=0)
        return total - math.log(n * (n - 1) / 2)


def effective_rank(x: Tensor, *, center: bool = False) -> Tensor:
    """Effective rank (RankMe, Garrido et al., 2023): ``exp(H(p))``, ``p = sigma / ||sigma||_1``.

    ``sigma`` are the singular values of the ``[N, d]`` feature matrix (float64); ``H`` is the
    Shannon entropy with ``0 log 0 = 0`` (no epsilon). The result lies in ``[1, min(N, d)]``;
    an all-zero matrix returns 0.

    Args:
        x: ``[N, d]`` features (not normalised; RankMe uses the raw embeddings).
        center: subtract the column mean first (off by default, as in RankMe).

    Returns:
        0-d float64 tensor.
    """
    check_tensor("x", x, ndim=2, floating=True)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"`x` must be non-empty, got shape {tuple(x.shape)}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        z = x.to(torch.float64)
        if center:
            z = z - z.mean(dim=0, keepdim=True)
        sigma = torch.linalg.svdvals(z)
        total = sigma.sum()
        if float(total) == 0.0:
            return total * 0.0
        p = sigma / total
        entropy = -torch.special.xlogy(p, p).sum()
        return torch.exp(entropy)


def modality_gap(a: Tensor, b: Tensor, *, normalize: bool = True) -> Tensor:
    """Modality gap ``||mean(a) - mean(b)||`` of normalised embeddings (Liang et al., 2022).

    Args:
        a: ``[N, d]`` embeddings of modality A (e.g. images).
        b: ``[M, d]`` embeddings of modality B (e.g. texts); ``M`` may differ from ``N``.
        normalize: L2-normalise the rows first.

    Returns:
        0-d float64 tensor in ``[0, 2]``.
    """
    with torch.autocast(device_type=a.device.type, enabled=False):
        an = _prep("a", a, normalize)
        bn = _prep("b", b, normalize)
        if an.shape[1] != bn.shape[1]:
            raise ValueError(
                f"`b` must have last dimension {an.shape[1]} like `a`, got {tuple(b.shape)}"
            )
        if an.shape[0] == 0 or bn.shape[0] == 0:
            raise ValueError("`a` and `b` must be non-empty")
        return torch.linalg.vector_norm(an.mean(dim=0) - bn.mean(dim=0))


def multimodal_geometry(
    a: Tensor,
    b: Tensor,
    t: float = 2.0,
    *,
    max_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """The two-modality report of docs/methods.md §5 as plain floats.

    Args:
        a: ``[N, d]`` modality A (images); b: ``[M, d]`` modality B (texts).
        t: uniformity scale.
        max_samples: optional subsample size per uniformity call (see :func:`uniformity`).
        generator: random generator for subsampling.

    Returns:
        ``{"uniformity_a", "uniformity_b", "uniformity_union", "modality_gap"}`` and
        ``"alignment"`` (row ``i`` of ``a`` paired with row ``i`` of ``b``) when ``N == M``.
    """
    with torch.no_grad():
        gap = float(modality_gap(a, b))  # validates shapes first
        union = torch.cat(
            [unit_rows(a.to(torch.float64), dim=1), unit_rows(b.to(torch.float64), dim=1)]
        )
        out = {
            "uniformity_a": float(uniformity(a, t, max_samples=max_samples, generator=generator)),
            "uniformity_b": float(uniformity(b, t, max_samples=max_samples, generator=generator)),
            "uniformity_union": float(
                uniformity(union, t, max_samples=max_samples, generator=generator)
            ),
            "modality_gap": gap,
        }
        if a.shape[0] == b.shape[0]:
            out["alignment"] = float(alignment(a, b))
    return out
