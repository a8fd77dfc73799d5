"""A method of your own, trained by ``contrastmix pretrain RECIPE --import examples/my_method.py``.

SimCLR's NT-Xent loss (Chen et al., ICML 2020, "A Simple Framework for Contrastive Learning of
Visual Representations") in ~30 lines: the base class builds the backbone and the projector,
draws the two views with a seeded generator, runs the optimiser and its schedule, saves
checkpoints and exports ``backbone.pt``; the method writes its loss. The recipe next to this
file (``examples/my_method.yaml``) trains it on MNIST-1D.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastmix.methods import Method, MethodConfig, register_method
from contrastmix.methods.base import require


@dataclass
class MySimCLRConfig(MethodConfig):
    """The recipe's ``method`` section: ``{name: my_simclr, temperature: 0.5}``."""

    name: str = "my_simclr"
    temperature: float = 0.5

    def check(self) -> None:
        require(self.temperature > 0, "temperature", self.temperature, "> 0")


@register_method
class MySimCLR(Method):
    """NT-Xent over the ``2B`` projections of two views of a batch."""

    name = "my_simclr"
    Config = MySimCLRConfig
    uses_projector = True

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, _, _ = batch
        v1, v2 = self.views(x)
        z = F.normalize(self.projector(self.backbone(torch.cat([v1, v2]))), dim=1)  # [2B, d]
        b = v1.shape[0]
        logits = (z @ z.T / self.config.temperature).fill_diagonal_(float("-inf"))
        target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
        loss = F.cross_entropy(logits, target)
        self.log_train_loss(loss, b)  # per-step value, and the epoch mean over all ranks
        return loss
