"""SupCon on equal-width bins of a regression label (docs/methods.md §2).

Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020 (the ``L_out`` form), used as a
regression baseline: the positives of an anchor are the views whose label falls in the same of
``num_bins`` equal-width label bins.

Two views of every sample are encoded by backbone + projector and L2-normalised
(``[B, 2, d]``); labels become bin ids with ``torch.bucketize`` over the inner bin edges
(:func:`contrastmix.data.labels.label_bin_edges`, kept as the ``bin_edges`` buffer) and the loss
is :class:`contrastmix.losses.supcon.SupConLoss`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from contrastmix.data.labels import dataset_labels, label_bin_edges
from contrastmix.data.registry import DataBundle
from contrastmix.losses.supcon import SupConLoss
from contrastmix.methods._contrastive_regression import ContrastiveRegression
from contrastmix.methods.base import MethodConfig, require

__all__ = ["SupConConfig", "SupCon"]


@dataclass
class SupConConfig(MethodConfig):
    """SupCon (binned labels) settings (the recipe's ``method`` section).

    Attributes:
        temperature: τ.
        num_bins: Number of equal-width label bins (the positives of an anchor are the views in
            its bin).
        bin_range: ``[low, high]`` of the bins in label units; empty = the training labels'
            min and max. Labels outside the range fall in the end bins.
    """

    name: str = "supcon"
    temperature: float = 0.1
    num_bins: int = 10
    bin_range: list[float] = field(default_factory=list)

    def check(self) -> None:
        require(self.temperature > 0, "temperature", self.temperature, "> 0")
        require(self.num_bins >= 1, "num_bins", self.num_bins, ">= 1")
        br = list(self.bin_range)
        require(not br or (len(br) == 2 and br[1] > br[0]), "bin_range", br,
                "[low, high] with high > low, or empty")


class SupCon(ContrastiveRegression):
    """SupCon pretraining on binned regression labels.

    Logs ``train_loss`` and ``view_cosine``; leaves the projector (``projector.pt``).

    Attributes:
        bin_edges: ``[num_bins - 1]`` float64 inner bin edges (a buffer, in the checkpoint).
    """

    name = "supcon"
    Config = SupConConfig
    bin_edges: Tensor

    def __init__(self, cfg: dict[str, Any], data: DataBundle) -> None:
        super().__init__(cfg, data)
        c = self.config
        # the training labels span the bins only when no range is given
        ref = torch.zeros(1) if c.bin_range else dataset_labels(data.train)
        self.register_buffer("bin_edges", label_bin_edges(ref, c.num_bins, list(c.bin_range)))

    def make_loss(self) -> nn.Module:
        return SupConLoss(temperature=self.config.temperature)

    def loss_labels(self, y: Tensor) -> Tensor:
        """Bin ids ``[B]`` (int64, ``0 .. num_bins - 1``) of the labels ``y [B]``."""
        return torch.bucketize(y.double(), self.bin_edges.to(y.device), right=True)
