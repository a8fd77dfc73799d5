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
    classes, counts = torch.unique(y, return_counts=True)
    count_of = dict(zip(classes.tolist(), counts.tolist(), strict=True))
    n = y.numel()
    partners = torch.tensor(
        [count_of[c] - 1 if same_class else n - count_of[c] for c in y.tolist()],
        dtype=torch.float64,
    )
    if n == 0 or float(partners.sum()) == 0:
        kind = "same-class" if same_class else "different-class"
        raise ValueError(f"`labels` admit no {kind} pair")
    i = torch.multinomial((partners > 0).double(), num_pairs, replacement=True,
                          generator=generator)
    order = torch.argsort(y, stable=True)  # sample ids grouped by class
    starts = {c: int(s) for c, s in zip(classes.tolist(),
                                        (torch.cumsum(counts, 0) - counts).tolist(),
                                        strict=True)}
    u = torch.rand(num_pairs, generator=generator, dtype=torch.float64)
    j = torch.empty(num_pairs, dtype=torch.long)
    for k, (ii, uu) in enumerate(zip(i.tolist(), u.tolist(), strict=True)):
        c = int(y[ii])
        r = min(int(uu * partners[ii]), int(partners[ii]) - 1)  # rank among the partners
        if same_class:
            block = order[starts[c]: starts[c] + count_of[c]]
            block = block[block != ii]
            j[k] = block[r]
        else:
            # skip class c's block in the class-sorted order
            s = starts[c]
            j[k] = order[r] if r < s else order[r + count_of[c]]
    return i, j
