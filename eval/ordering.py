"""How ordered a representation is with respect to a continuous label (docs/methods.md §2).

The Spearman rank correlation between pairwise embedding distances and pairwise label
distances, as used to assess regression representations in Rank-N-Contrast (Zha et al.,
NeurIPS 2023) and SupReMix (Wu et al., 2023): a representation whose distances grow with
label distance scores close to 1, an unordered one close to 0.

For a seeded subsample of at most ``max_samples`` rows, over all pairs ``i < j``:

* ``d_ij = || f_i / ||f_i|| - f_j / ||f_j|| ||_2`` (L2-normalised features, float64);
* ``e_ij = |y_i - y_j|`` (Euclidean distance for vector labels ``[N, k]``);
* ``rho = Pearson(rank(d), rank(e))`` with tied values given their average rank (the
  standard Spearman correlation, equal to ``scipy.stats.spearmanr``).

``rho`` is undefined (``nan`` is returned) when either list of distances is constant, e.g. all
labels equal or all embeddings collinear in the same direction.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from contrastmix._numerics import unit_rows
from contrastmix._validation import check_positive, check_same_length, check_tensor

__all__ = ["distance_spearman", "average_ranks", "spearman_correlation", "pairwise_distances"]


def average_ranks(values: Tensor) -> Tensor:
    """Ranks ``1..n`` of a 1-D tensor, ties sharing their average rank (float64).

    Args:
        values: ``[n]`` real values.

    Returns:
        ``[n]`` float64 ranks (``scipy.stats.rankdata(method="average")``).
    """
    check_tensor("values", values, ndim=1)
    n = values.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.float64, device=values.device)
    sorted_vals, order = torch.sort(values, stable=True)
    new_group = torch.ones(n, dtype=torch.bool, device=values.device)
    new_group[1:] = sorted_vals[1:] != sorted_vals[:-1]
    group = torch.cumsum(new_group.long(), dim=0) - 1  # group id of each sorted position
    starts = torch.nonzero(new_group).flatten()  # first sorted position of each group
    ends = torch.cat([starts[1:], torch.tensor([n], device=values.device)])
    # Positions start..end-1 (0-based) -> ranks start+1..end; their mean is (start+1+end)/2.
    avg = (starts + 1 + ends).to(torch.float64) / 2.0
    ranks = torch.empty(n, dtype=torch.float64, device=values.device)
    ranks[order] = avg[group]
    return ranks


def spearman_correlation(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (average ranks for ties).

    Args:
        a: ``[n]`` values; b: ``[n]`` values.

    Returns:
        ``rho`` in ``[-1, 1]``; ``nan`` when either input is constant or ``n < 2``.
    """
    check_tensor("a", a, ndim=1)
    check_tensor("b", b, ndim=1)
    check_same_length(a=a, b=b)
    if a.numel() < 2:
        return math.nan
    ra = average_ranks(a)
    rb = average_ranks(b.to(a.device))
    ra = ra - ra.mean()
    rb = rb - rb.mean()
    den = torch.sqrt((ra * ra).sum() * (rb * rb).sum())
    if float(den) == 0.0:
        return math.nan
    return float(((ra * rb).sum() / den).clamp(-1.0, 1.0))


def pairwise_distances(x: Tensor) -> Tensor:
    """Euclidean distances ``[n (n - 1) / 2]`` over pairs ``i < j`` (row-major order), float64.

    Args:
        x: ``[n, d]`` points.
    """
    check_tensor("x", x, ndim=2)
    n = x.shape[0]
    i, j = torch.triu_indices(n, n, offset=1, device=x.device)
    x64 = x.to(torch.float64)
    # Direct differences (not the |a|^2 + |b|^2 - 2ab expansion): equal distances stay equal,
    # so ties are detected exactly (e.g. integer labels).
    return torch.cdist(x64, x64, compute_mode="donot_use_mm_for_euclid_dist")[i, j]


def distance_spearman(
    features: Tensor, labels: Tensor, *, max_samples: int = 1000, seed: int = 0
) -> float:
    """Spearman correlation between embedding distances and label distances.

    Args:
        features: ``[N, d]`` embeddings (L2-normalised here; zero rows stay zero).
        labels: ``[N]`` (or ``[N, k]``) real-valued targets.
        max_samples: Use a random subsample of this many rows when ``N`` is larger
            (``O(max_samples^2)`` pairs); the subsample is drawn with a ``torch.Generator``
            seeded with ``seed``.
        seed: Seed of the subsample.

    Returns:
        ``rho`` in ``[-1, 1]`` over all pairs ``i < j`` of the (sub)sample; ``nan`` when either
        distance list is constant (see the module docstring).

    Raises:
        ValueError: wrong shapes, mismatched lengths, non-finite values, ``N < 2``,
            ``max_samples < 2``.
    """
    check_tensor("features", features, ndim=2, floating=True)
    check_tensor("labels", labels, ndim=(1, 2))
    check_same_length(features=features, labels=labels)
    check_positive("max_samples", max_samples)
    if max_samples < 2:
        raise ValueError(f"`max_samples` must be >= 2, got {max_samples}")
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"`features` needs at least 2 rows, got {n}")
    if labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"`labels` must be real numbers, got {labels.dtype}")
    f = features.detach()
    y = labels.detach().to(f.device)
    if n > max_samples:
        g = torch.Generator().manual_seed(int(seed))
        keep = torch.randperm(n, generator=g)[:max_samples].to(f.device)
        f, y = f[keep], y[keep]
    z = unit_rows(f.to(torch.float64), dim=1)
    y2 = y.to(torch.float64).reshape(y.shape[0], -1)
    return spearman_correlation(pairwise_distances(z), pairwise_distances(y2))
