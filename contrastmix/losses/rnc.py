"""Rank-N-Contrast (RnC): contrastive regression by ranking label distances.

Zha, Cao, Yang, Xie & Chen, "Rank-N-Contrast: Learning Continuous Representations for
Regression", NeurIPS 2023. The strongest contrastive-regression baseline next to SupReMix
(docs/methods.md §2).

``features [B, V, d]`` are flattened view-major into ``N = V * B`` anchors ``z`` with labels
``y``. With similarity ``s_ij = -||z_i - z_j||_2 / tau``, for anchor ``i`` and every ``j != i``:

    l_ij = -log( exp(s_ij) / sum_{k != i, |y_i - y_k| >= |y_i - y_j|} exp(s_ik) )

(the set always contains ``j`` itself) and ``L = mean_{i, j != i} l_ij``. The loss only
depends on the *order* of label distances, so it is invariant to adding a constant to the labels
and to scaling them by a positive factor.

Implementation: per anchor, candidates are sorted by label distance; the denominator of ``j``
is a suffix log-sum-exp (``logcumsumexp`` over the reversed order) located with
``searchsorted`` so that ties ``|y_i - y_k| = |y_i - y_j|`` are included, as in the paper. Cost
``O(N^2 log N)`` time and ``O(N^2 + N d)`` memory (the authors' loop is ``O(N^3)`` time).
Pairwise distances come from the Gram matrix, clamped at ``1e-12`` before the square root so
that coincident embeddings give a finite gradient. Features need not be normalised.
``N = 1`` has no pair: the loss is ``0`` with a zero gradient connected to ``features``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastmix._numerics import pairwise_distances_expanded
from contrastmix._validation import check_positive
from contrastmix.losses._contracts import flatten_views

__all__ = ["rnc_loss", "RnCLoss"]


def rnc_loss(features: Tensor, labels: Tensor, temperature: float = 2.0) -> Tensor:
    """Rank-N-Contrast loss.

    Args:
        features: ``[B, V, d]`` embeddings (V views per sample; L2-normalised in this toolkit,
            not required by the loss).
        labels: ``[B]`` real-valued targets.
        temperature: tau > 0 (2.0 as in the paper).

    Returns:
        Scalar loss (fp32, or fp64 for fp64 features).

    Raises:
        ValueError: ``features`` not ``[B, V, d]`` floating / non-finite, ``labels`` missing or
            not ``[B]`` real numbers (:func:`~contrastmix.losses._contracts.check_view_inputs`),
            or ``temperature <= 0``.
    """
    check_positive("temperature", temperature)
    z, y = flatten_views(features, labels)
    assert y is not None
    y = y.to(torch.float64)
    n = z.shape[0]
    dtype = torch.promote_types(z.dtype, torch.float32)
    with torch.autocast(device_type=z.device.type, enabled=False):
        zf = z.to(dtype)
        if n < 2:
            return (zf * 0.0).sum()
        # scale-aware expansion: finite for large entries (plain values otherwise)
        sim = -pairwise_distances_expanded(zf, min_sq=1e-12) / temperature  # [N, N]
        # Drop the diagonal: row i keeps the N - 1 candidates k != i, in order (a gather of
        # column c + [c >= i], not a bool mask: no host synchronisation on a GPU).
        c = torch.arange(n - 1, device=z.device)
        off = c[None, :] + (c[None, :] >= torch.arange(n, device=z.device)[:, None]).long()
        sim = sim.gather(1, off)
        dist = (y[:, None] - y[None, :]).abs().gather(1, off)
        # Sort candidates by label distance (ascending) and build suffix log-sum-exps:
        # suffix[i, r] = log sum_{r' >= r} exp(sim_sorted[i, r']).
        dist_sorted, order = torch.sort(dist, dim=1, stable=True)
        sim_sorted = sim.gather(1, order)
        suffix = torch.logcumsumexp(sim_sorted.flip(1), dim=1).flip(1)
        # Denominator of j: all k with dist >= dist_j, i.e. from the first sorted position whose
        # distance equals dist_j (ties included).
        first = torch.searchsorted(dist_sorted, dist_sorted, side="left")
        denom = suffix.gather(1, first)
        return (denom - sim_sorted).mean()


class RnCLoss(nn.Module):
    """Module form of :func:`rnc_loss` (a view loss: ``(features, labels)``).

    Args:
        temperature: tau (2.0).

    Shapes:
        ``forward(features [B, V, d], labels [B]) -> scalar``.
    """

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        check_positive("temperature", temperature)
        self.temperature = float(temperature)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        return rnc_loss(features, labels, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
