"""Rank-N-Contrast: contrastive regression by ranking label distances (docs/methods.md §2).

Zha, Cao, Yang, Xie & Chen, "Rank-N-Contrast: Learning Continuous Representations for
Regression", NeurIPS 2023.

Two views of every sample are encoded by backbone + projector (``[B, 2, d]``, L2-normalised
unless ``normalize: false``; the backbone features themselves with ``projector: false``, which
with ``normalize: false`` and ``temperature: 2`` is the paper's setting,
``recipes/rnc_paper_rotated_digits.yaml``); for each anchor and each other view ``j``, the loss
(:class:`contrastmix.losses.rnc.RnCLoss`) contrasts ``j`` against every view whose label is at
least as far from the anchor's, with similarities ``-||z_i - z_j|| / τ``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from contrastmix.data.registry import DataBundle
from contrastmix.losses.rnc import RnCLoss
from contrastmix.methods._contrastive_regression import ContrastiveRegression
from contrastmix.methods.base import MethodConfig, require

__all__ = ["RnCConfig", "RnC"]


@dataclass
class RnCConfig(MethodConfig):
    """Rank-N-Contrast settings (the recipe's ``method`` section).

    Attributes:
        temperature: τ of ``s_ij = -||z_i - z_j|| / τ`` (the paper uses 2 on unnormalised
            512-d features; with L2-normalised projections distances are <= 2, so use a
            smaller τ).
        normalize: L2-normalise the projections before the loss.
        projector: Build the projection head and apply the loss to its output; ``false``
            applies the loss to the backbone features (as the paper does: no projector,
            unnormalised features, τ = 2).
    """

    name: str = "rnc"
    temperature: float = 0.2
    normalize: bool = True
    projector: bool = True

    def check(self) -> None:
        require(self.temperature > 0, "temperature", self.temperature, "> 0")


class RnC(ContrastiveRegression):
    """Rank-N-Contrast pretraining on a regression dataset.

    Logs ``train_loss`` and ``view_cosine``; leaves the projector, if any (``projector.pt``).
    """

    name = "rnc"
    Config = RnCConfig

    def wants_projector(self) -> bool:
        return bool(self.config.projector)

    def __init__(self, cfg: dict[str, Any], data: DataBundle) -> None:
        super().__init__(cfg, data)
        self.normalize = bool(self.config.normalize)

    def make_loss(self) -> nn.Module:
        return RnCLoss(temperature=self.config.temperature)
