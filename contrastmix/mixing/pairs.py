"""Random same-class or different-class index pairs (docs/methods.md §8, mixup geometry).

The pairs whose inputs are mixed to measure the geometry of mixup features (Fisher, Meng &
Papyan, "Pushing Boundaries: Mixup's Influence on Neural Collapse", ICLR 2024); see
:func:`contrastmix.eval.collapse.mixed_pair_features` and
:func:`contrastmix.eval.collapse.mixup_geometry`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastmix._validation import check_tensor

__all__ = ["sample_pairs"]


def sample_pairs(
    labels: Tensor, num_pairs: int, *, same_class: bool,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Random index pairs ``(i, j)``, ``i != j``, of the same or of different classes.

    ``i`` is uniform over samples whose class admits a partner; ``j`` is uniform over the
    admissible partners of ``i``.

    Args:
        labels: ``[N]`` integer labels.
        num_pairs: Number of pairs (> 0).
        same_class: Pairs with ``labels[i] == labels[j]`` (else ``!=``).
        generator: Optional CPU generator.

    Returns:
        ``(i [num_pairs], j [num_pairs])`` int64 indices (on the CPU).

    Raises:
        ValueError: no admissible pair exists, or bad arguments.
    """
    check_tensor("labels", labels, ndim=1)
    if labels.is_floating_point():
        raise ValueError(f"`labels` must be integer class indices, got {labels.dtype}")
    if not isinstance(num_pairs, int) or num_pairs < 1:
        raise ValueError(f"`num_pairs` must be a positive int, got {num_pairs!r}")
    y = labels.detach().cpu().long()
    n = y.numel()
    # per sample: where its class starts in the class-sorted order, and the class size
    # (tensor ops only: no per-sample Python loop, no unique)
    order = torch.argsort(y, stable=True)  # sample ids grouped by class
    ys = y[order]
    start = torch.searchsorted(ys, y, side="left")
    count = torch.searchsorted(ys, y, side="right") - start
    partners = (count - 1 if same_class else n - count).to(torch.float64)
    if n == 0 or float(partners.sum()) == 0:
        kind = "same-class" if same_class else "different-class"
        raise ValueError(f"`labels` admit no {kind} pair")
    i = torch.multinomial((partners > 0).double(), num_pairs, replacement=True,
                          generator=generator)
    u = torch.rand(num_pairs, generator=generator, dtype=torch.float64)
    p_i = partners[i]
    # rank among the partners of i (u * p >= 0: floor is int()'s truncation)
    r = torch.minimum(torch.floor(u * p_i).long(), p_i.long() - 1)
    s_i, c_i = start[i], count[i]
    if same_class:
        # class block order[s : s + c] without i itself (at position rank_i of the block)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n)
        pos = s_i + r + (r >= rank[i] - s_i).long()
    else:
        pos = torch.where(r < s_i, r, r + c_i)  # skip the block of i's class
    return i, order[pos]
