"""Input mixup of a batch with a permutation of itself (docs/methods.md §10.1).

Zhang, Cisse, Dauphin & Lopez-Paz, "mixup: Beyond Empirical Risk Minimization", ICLR 2018.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastmix.mixing._batch import check_batch, draw_lam, permutation

__all__ = ["mixup_batch"]


def mixup_batch(
    x: Tensor, y: Tensor, alpha: float = 1.0, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor, float]:
    """Input mixup of a batch with a permutation of itself.

    ``lam ~ Beta(alpha, alpha)`` (one draw per batch) and one ``randperm`` per batch, as in
    the official code.

    Args:
        x: ``[B, ...]`` floating inputs.
        y: ``[B]`` integer labels.
        alpha: Beta concentration (> 0; 1 = uniform ``lam``).
        generator: Optional generator for ``lam`` and the permutation (CPU, or ``x``'s
            device). A CPU generator keeps the step free of host synchronisation.

    Returns:
        ``(x_mix [B, ...], y_a [B], y_b [B], lam)`` with
        ``x_mix = lam * x + (1 - lam) * x[perm]``, ``y_a = y``, ``y_b = y[perm]``.

    Raises:
        ValueError: bad shapes, mismatched lengths or ``alpha <= 0`` (naming the argument).
    """
    x, y = check_batch(x, y)
    lam = draw_lam(alpha, generator)
    perm = permutation(x.shape[0], x.device, generator)
    return lam * x + (1.0 - lam) * x[perm], y, y[perm], lam
