"""Checks and draws shared by the batch mixers (:mod:`~contrastmix.mixing.mixup`,
:mod:`~contrastmix.mixing.cutmix`)."""

from __future__ import annotations

import torch
from torch import Tensor

from contrastmix._validation import check_same_length, check_tensor
from contrastmix.mixing.beta import sample_beta


def check_batch(x: object, y: object) -> tuple[Tensor, Tensor]:
    """Validate a batch ``x [B, ...]`` (floating, 2-5 dims) and its labels ``y [B]``.

    ``x`` is not scanned for NaN (that would synchronise with the device every step; mixing
    creates none, and the loss checks its logits).
    """
    check_tensor("x", x, ndim=(2, 3, 4, 5), floating=True, finite=False)
    check_tensor("y", y, ndim=1, finite=False)
    assert isinstance(x, Tensor) and isinstance(y, Tensor)
    check_same_length(x=x, y=y)
    if x.shape[0] == 0:
        raise ValueError("`x` is an empty batch")
    return x, y


def draw_lam(alpha: float, generator: torch.Generator | None) -> float:
    """One ``Beta(alpha, alpha)`` draw (:func:`~contrastmix.mixing.beta.sample_beta`) as a Python
    float (no device synchronisation with a CPU generator or none; a device generator's draw is
    copied to the host)."""
    return float(sample_beta((), alpha, generator=generator))


def permutation(n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """``randperm(n)`` drawn on the generator's device (CPU without one), moved to ``device``."""
    dev = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(n, generator=generator, device=dev).to(device, non_blocking=True)
