"""M3CoL: multimodal mixup contrastive learning for classification (docs/methods.md §6).

Kumar, Singhal et al., "Harnessing Shared Relations via Multimodal Mixup Contrastive Learning
for Multimodal Classification", 2024 (arXiv:2409.17777).

The concat fusion classifier (:mod:`contrastmix.methods.concat`) plus a contrastive term on the
projected embeddings ``z_m [B, proj_dim]``:
``L = CE(fusion) + sum_m CE(unimodal_m) + contrast_weight * L_contrast``. ``L_contrast``
(:class:`contrastmix.losses.m3col.M3CoLLoss`) is M3Co (mixup of one modality against the next,
cyclically) while ``epoch < int(mixup_pct * max_epochs)`` (:func:`uses_mixup`, the authors'
rule, kept here) and SoftCLIP afterwards. The mixing draws come from this method's seeded
stream on the CPU (per rank; saved in the checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from contrastmix.data.registry import DataBundle
from contrastmix.losses.m3col import M3CoLLoss
from contrastmix.methods.base import require
from contrastmix.methods.concat import Concat, ConcatConfig
from contrastmix.rundir import RunArtifacts

__all__ = ["M3CoLConfig", "M3CoL", "uses_mixup", "softclip_epoch"]


def softclip_epoch(mixup_pct: float, max_epochs: int) -> int:
    """The first (0-based) epoch of the SoftCLIP phase: ``int(mixup_pct * max_epochs)``."""
    if max_epochs <= 0:
        raise ValueError(f"`max_epochs` must be > 0, got {max_epochs}")
    return int(mixup_pct * max_epochs)


def uses_mixup(epoch: int, max_epochs: int, mixup_pct: float) -> bool:
    """True in the M3Co phase (``epoch < int(mixup_pct * max_epochs)``), False in SoftCLIP's.

    Raises:
        ValueError: ``epoch < 0`` or ``max_epochs <= 0``.
    """
    if epoch < 0:
        raise ValueError(f"`epoch` must be >= 0, got {epoch}")
    return epoch < softclip_epoch(mixup_pct, max_epochs)


@dataclass
class M3CoLConfig(ConcatConfig):
    """M3CoL settings: the fusion classifier's plus the contrastive term.

    Attributes:
        temperature: τ of M3Co (0.1).
        beta_param: ``beta ~ Beta(beta_param, beta_param)`` (0.15).
        mix_prob: Probability that a sample is mixed (0.5).
        mixup_pct: Share of the epochs trained with M3Co before SoftCLIP (0.33).
        soft_temperature: τ of SoftCLIP (0.125).
        contrast_weight: Weight of the contrastive term (0.1).
        detach_soft_targets: Stop the gradient through SoftCLIP's targets.
        gather_distributed: Use every rank's embeddings as candidates under DDP.
    """

    name: str = "m3col"
    temperature: float = 0.1
    beta_param: float = 0.15
    mix_prob: float = 0.5
    mixup_pct: float = 0.33
    soft_temperature: float = 0.125
    contrast_weight: float = 0.1
    detach_soft_targets: bool = False
    gather_distributed: bool = True

    def check(self) -> None:
        super().check()
        require(self.temperature > 0, "temperature", self.temperature, "> 0")
        require(self.beta_param > 0, "beta_param", self.beta_param, "> 0")
        require(0 <= self.mix_prob <= 1, "mix_prob", self.mix_prob, "in [0, 1]")
        require(0 <= self.mixup_pct <= 1, "mixup_pct", self.mixup_pct, "in [0, 1]")
        require(self.soft_temperature > 0, "soft_temperature", self.soft_temperature, "> 0")
        require(self.contrast_weight >= 0, "contrast_weight", self.contrast_weight, ">= 0")


class M3CoL(Concat):
    """M3CoL training: the concat classifier plus the scheduled contrastive term.

    ``contrast`` logs the unweighted ``L_contrast``; the report marks the epoch SoftCLIP
    starts.
    """

    name = "m3col"
    Config = M3CoLConfig

    def __init__(self, cfg: dict[str, Any], data: DataBundle) -> None:
        super().__init__(cfg, data)
        c = self.config
        self.contrast_loss = M3CoLLoss(
            temperature=c.temperature, beta_param=c.beta_param, mix_prob=c.mix_prob,
            soft_temperature=c.soft_temperature, detach_soft_targets=c.detach_soft_targets,
            gather_distributed=c.gather_distributed,
        )

    def contrast_term(self, embeddings: list[Tensor]) -> tuple[Tensor, Tensor]:
        mixup = uses_mixup(self.current_epoch, self.trainer.max_epochs or 1,
                           self.config.mixup_pct)
        contrast = self.contrast_loss(*embeddings, mixup=mixup,
                                      generator=self.generator("m3co", "cpu"))
        return self.config.contrast_weight * contrast, contrast

    def export_artifacts(self, run_dir: Path) -> RunArtifacts:
        art = super().export_artifacts(run_dir)
        max_epochs = self.trainer.max_epochs or 1
        art.curve_markers = [{"epoch": softclip_epoch(self.config.mixup_pct, max_epochs),
                              "label": "M3CoL: SoftCLIP phase starts",
                              "metrics": ["loss", "contrast"]}]
        return art
