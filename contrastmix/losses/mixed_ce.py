"""The mixup loss: cross-entropy against two labels weighted ``lam`` and ``1 - lam``
(docs/methods.md §8, §10).

Zhang, Cisse, Dauphin & Lopez-Paz, "mixup: Beyond Empirical Risk Minimization", ICLR 2018;
with ``lam = 1`` it is the plain cross-entropy of ERM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastmix._validation import check_same_length, check_tensor

__all__ = ["mixed_cross_entropy"]


def mixed_cross_entropy(
    logits: Tensor, y_a: Tensor, y_b: Tensor, lam: float, label_smoothing: float = 0.0
) -> Tensor:
    """Mixup loss ``lam CE(logits, y_a) + (1 - lam) CE(logits, y_b)`` (mean over the batch).

    Equals the soft cross-entropy with target ``lam e_{y_a} + (1 - lam) e_{y_b}``. Computed in
    float32 (or wider) even under autocast. ``lam = 1`` is plain cross-entropy (``y_b`` is
    ignored).

    Args:
        logits: ``[B, C]``.
        y_a: ``[B]`` labels weighted ``lam``.
        y_b: ``[B]`` labels weighted ``1 - lam``.
        lam: Mixing weight in ``[0, 1]`` (a Python float).
        label_smoothing: In ``[0, 1)``, applied to both terms.

    Returns:
        Scalar loss.

    Raises:
        ValueError: bad shapes, an empty batch, mismatched lengths, non-finite logits,
            ``lam`` outside ``[0, 1]`` or ``label_smoothing`` outside ``[0, 1)`` (naming the
            argument).
    """
    check_tensor("logits", logits, ndim=2, floating=True)
    check_tensor("y_a", y_a, ndim=1)
    check_tensor("y_b", y_b, ndim=1)
    check_same_length(logits=logits, y_a=y_a, y_b=y_b)
    if logits.shape[0] == 0:
        raise ValueError("`logits` must hold at least one row (the batch is empty)")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"`lam` must lie in [0, 1], got {lam}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"`label_smoothing` must lie in [0, 1), got {label_smoothing}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        loss = lam * F.cross_entropy(z, y_a, label_smoothing=label_smoothing)
        if lam < 1.0:
            loss = loss + (1.0 - lam) * F.cross_entropy(z, y_b, label_smoothing=label_smoothing)
    return loss
