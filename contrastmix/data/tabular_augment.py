"""Augmentations for standardised tabular features: Gaussian feature noise and feature dropout.

Two views of a table row for contrastive learning (SimCLR / SupCon / SupReMix on tabular
regression, e.g. :func:`contrastmix.data.diabetes.load_diabetes_reg`), in the spirit of the
corruption-based views of SCARF (Bahri et al., ICLR 2022) and VIME (Yoon et al., NeurIPS 2020),
kept deliberately simple: ``x + noise_std * N(0, 1)``, then each feature independently set to
``0`` (the training mean of standardised features) with probability ``dropout`` (no
rescaling).
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastmix._validation import check_positive, check_tensor

__all__ = ["TabularAugment"]


class TabularAugment:
    """Random feature noise and feature dropout on batched rows.

    Args:
        noise_std: Standard deviation of the additive Gaussian noise (>= 0, in the units of the
            standardised features).
        dropout: Probability of zeroing each feature of each row (in ``[0, 1)``).

    Shapes:
        ``__call__(x [B, F], generator=None) -> [B, F]`` (same dtype and device).
    """

    def __init__(self, noise_std: float = 0.1, dropout: float = 0.1) -> None:
        check_positive("noise_std", noise_std, allow_zero=True)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout}")
        self.noise_std = float(noise_std)
        self.dropout = float(dropout)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        check_tensor("x", x, ndim=2, floating=True)
        out = x
        if self.noise_std > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            out = out + self.noise_std * noise
        if self.dropout > 0:
            keep = torch.rand(x.shape, generator=generator, device=x.device) >= self.dropout
            out = out * keep.to(x.dtype)
        return out

    def __repr__(self) -> str:
        return f"TabularAugment(noise_std={self.noise_std}, dropout={self.dropout})"
