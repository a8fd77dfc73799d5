"""Mixup: ERM on mixed inputs, input mixup or CutMix (docs/methods.md §8, §10.1, §10.2).

Zhang, Cisse, Dauphin & Lopez-Paz, "mixup: Beyond Empirical Risk Minimization", ICLR 2018;
Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
Features", ICCV 2019; studied into the terminal phase by Fisher, Meng & Papyan, "Pushing
Boundaries: Mixup's Influence on Neural Collapse", ICLR 2024.

Each batch is mixed with a permutation of itself, ``x~ = lam x + (1 - lam) x[perm]`` with
``lam ~ Beta(mixup_alpha, mixup_alpha)`` (one draw per batch,
:func:`contrastmix.mixing.mixup.mixup_batch`), or, with probability ``cutmix_prob``, a box of
``x[perm]`` is pasted into ``x`` (:func:`contrastmix.mixing.cutmix.cutmix_batch`); the loss is
``lam CE(f(x~), y) + (1 - lam) CE(f(x~), y[perm])``. Everything else (collapse tracking, the
final artefacts) is :class:`~contrastmix.methods.erm.ERM`'s. The draws come from this method's
seeded CPU generator ``mix`` (one stream per rank, saved in the checkpoint), so a step does not
wait for the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from contrastmix.methods.base import require
from contrastmix.methods.erm import ERM, ERMConfig
from contrastmix.mixing.cutmix import cutmix_batch
from contrastmix.mixing.mixup import mixup_batch

__all__ = ["MixupConfig", "Mixup"]


@dataclass
class MixupConfig(ERMConfig):
    """Mixup settings: ERM's plus the mixing.

    Attributes:
        mixup_alpha: Beta concentration (> 0; 1 = uniform ``lam``).
        cutmix_prob: Probability that a batch uses CutMix (a box of ``x[perm]`` pasted into
            ``x``; a segment for 1-D signals) instead of input mixup; 0 for signals, e.g. 0.5
            for image datasets such as ``digits``.
    """

    name: str = "mixup"
    mixup_alpha: float = 1.0
    cutmix_prob: float = 0.0

    def check(self) -> None:
        super().check()
        require(self.mixup_alpha > 0, "mixup_alpha", self.mixup_alpha, "> 0")
        require(0 <= self.cutmix_prob <= 1, "cutmix_prob", self.cutmix_prob, "in [0, 1]")


class Mixup(ERM):
    """ERM trained on mixup / CutMix batches (see the module docstring)."""

    name = "mixup"
    Config = MixupConfig

    def mix(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
        c = self.config
        g = self.generator("mix", "cpu")
        use_cutmix = c.cutmix_prob > 0 and float(torch.rand(1, generator=g)) < c.cutmix_prob
        mixer = cutmix_batch if use_cutmix else mixup_batch
        return mixer(x, y, c.mixup_alpha, generator=g)
