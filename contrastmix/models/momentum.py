"""Momentum (EMA) encoder, as in MoCo (He et al., CVPR 2020) and BYOL.

Uses lightly's ``update_momentum`` and ``cosine_schedule`` for the update and the optional
momentum ramp ``m -> 1``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["MomentumEncoder"]


class MomentumEncoder(nn.Module):
    """An exponential moving average copy of ``online`` that receives no gradient.

    ``θ_k <- m θ_k + (1 - m) θ_q`` after each step; buffers (BN statistics) are copied as they are
    in the reference MoCo implementation's EMA of ``state_dict``-level parameters only.

    Args:
        online: The online module (copied at construction).
        momentum: Base momentum ``m``.
        end_momentum: Final momentum of a cosine ramp over training (``None`` keeps ``m``).
    """

    def __init__(
        self, online: nn.Module, momentum: float = 0.99, end_momentum: float | None = None
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"`momentum` must be in [0, 1], got {momentum}")
        self.module = copy.deepcopy(online)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.momentum = momentum
        self.end_momentum = end_momentum

    def current_momentum(self, step: int, max_steps: int) -> float:
        """Momentum at ``step`` of ``max_steps`` (cosine ramp to ``end_momentum`` if set)."""
        if self.end_momentum is None or max_steps <= 0:
            return self.momentum
        from lightly.utils.scheduler import cosine_schedule

        return float(cosine_schedule(step, max_steps, self.momentum, self.end_momentum))

    @torch.no_grad()
    def update(self, online: nn.Module, momentum: float | None = None) -> None:
        """EMA step towards ``online``'s parameters (lightly ``update_momentum``)."""
        from lightly.models.utils import update_momentum

        update_momentum(online, self.module, self.momentum if momentum is None else momentum)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.module(x)
