"""m2-mix: CLIP plus geodesic multimodal mixup (docs/methods.md §5).

Oh et al., "Geodesic Multi-Modal Mixup for Robust Fine-Tuning", NeurIPS 2023.

Hard negatives ``M_j = slerp(I_j, T_j, lam)`` are mixed on the hypersphere between the two
modalities and every anchor must still prefer its own pair
(:class:`contrastmix.losses.m2mix.M2MixLoss`):
``L = L_clip + c(epoch) * (w_m L_m2 + w_v L_vmix + w_l L_lmix)`` with the schedule
``c(epoch) = 1 / (epoch + 1)`` (:func:`mix_coefficient`) kept here, not in the loss. One
``lam ~ Beta(alpha, alpha)`` per batch, drawn on the CPU from this method's seeded stream (the
same on every rank, saved in the checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from contrastmix.data.registry import DataBundle
from contrastmix.losses.m2mix import M2MixLoss
from contrastmix.methods.base import require
from contrastmix.methods.clip import CLIP, ClipConfig

__all__ = ["M2MixConfig", "M2Mix", "mix_coefficient"]


def mix_coefficient(epoch: int, scheduled: bool = True) -> float:
    """``c(epoch) = 1 / (epoch + 1)`` (epoch 0-based) when ``scheduled``, else 1.

    Raises:
        ValueError: ``epoch < 0``.
    """
    if epoch < 0:
        raise ValueError(f"`epoch` must be >= 0, got {epoch}")
    return 1.0 / (epoch + 1) if scheduled else 1.0


@dataclass
class M2MixConfig(ClipConfig):
    """m2-mix settings: CLIP's plus the mixed terms.

    Attributes:
        mix_temperature: τ_m of the mixed terms (0.07).
        alpha: ``lam ~ Beta(alpha, alpha)`` (0.5).
        weight: w_m of the m2-mix term (paper range [0.001, 0.05]).
        schedule: Multiply the mixed terms by ``1 / (epoch + 1)``.
        detach_mix: Detach the mixtures.
        reduction: ``"sum"`` or ``"mean"`` of the two anchor terms.
        vmix_weight: Weight of the optional image-only (V-mix) term.
        lmix_weight: Weight of the optional text-only (L-mix) term.
    """

    name: str = "m2mix"
    mix_temperature: float = 0.07
    alpha: float = 0.5
    weight: float = 0.01
    schedule: bool = True
    detach_mix: bool = False
    reduction: str = "sum"
    vmix_weight: float = 0.0
    lmix_weight: float = 0.0

    def check(self) -> None:
        super().check()
        require(self.mix_temperature > 0, "mix_temperature", self.mix_temperature, "> 0")
        require(self.alpha > 0, "alpha", self.alpha, "> 0")
        for key in ("weight", "vmix_weight", "lmix_weight"):
            value = getattr(self, key)
            require(value >= 0, key, value, ">= 0")
        require(self.reduction in ("sum", "mean"), "reduction", self.reduction,
                "one of sum, mean")


class M2Mix(CLIP):
    """CLIP + m2-mix training.

    Logs CLIP's metrics plus ``m2_loss``, ``m2_lam`` and ``m2_coef`` (the schedule's value).
    """

    name = "m2mix"
    Config = M2MixConfig

    def __init__(self, cfg: dict[str, Any], data: DataBundle) -> None:
        super().__init__(cfg, data)
        c = self.config
        self.criterion = M2MixLoss(
            temperature=c.temperature, mix_temperature=c.mix_temperature, alpha=c.alpha,
            weight=c.weight, detach_mix=c.detach_mix, reduction=c.reduction,
            vmix_weight=c.vmix_weight, lmix_weight=c.lmix_weight,
            gather_distributed=c.gather_distributed,
        )

    def objective(self, image: Tensor, text: Tensor, temperature: Tensor
                  ) -> tuple[Tensor, dict[str, Any]]:
        coef = mix_coefficient(self.current_epoch, self.config.schedule)
        out = self.criterion.compute(
            image, text, coef=coef, temperature=temperature,
            generator=self.generator("m2mix", "cpu", per_rank=False),
        )
        return out.loss, {"clip_loss": out.clip, "m2_loss": out.m2, "m2_lam": out.lam,
                          "m2_coef": out.coef}
