"""MoCHi: MoCo v2 with hard negative mixing (docs/methods.md §1).

Kalantidis et al., "Hard Negative Mixing for Contrastive Learning", NeurIPS 2020.

After ``warmup_epochs`` epochs of plain MoCo, each query also sees ``s`` synthetic negatives
mixed from pairs of its ``N`` hardest queue rows and ``s'`` mixed from the query itself and one
hard row (:class:`contrastmix.losses.mochi.MoCHiLoss`; the mixtures are never materialised).
The mixing draws come from this method's own seeded generator, saved in the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from contrastmix.data.registry import DataBundle
from contrastmix.losses.mochi import MoCHiLoss
from contrastmix.methods.base import require
from contrastmix.methods.moco import MoCo, MoCoConfig
from contrastmix.rundir import RunArtifacts

__all__ = ["MoCHiConfig", "MoCHi"]


@dataclass
class MoCHiConfig(MoCoConfig):
    """MoCHi settings: MoCo's plus the mixing.

    Attributes:
        num_hard: ``N``, hardest queue rows per query that are mixed (1024).
        num_mix: ``s``, synthetic negatives from pairs of hard rows (1024).
        num_query_mix: ``s'``, synthetic negatives mixing the query into a hard row (128).
        warmup_epochs: Epochs of plain MoCo before mixing starts.
    """

    name: str = "mochi"
    num_hard: int = 1024
    num_mix: int = 1024
    num_query_mix: int = 128
    warmup_epochs: int = 10

    def check(self) -> None:
        super().check()
        require(self.num_hard >= 1, "num_hard", self.num_hard, ">= 1")
        require(self.num_mix >= 0, "num_mix", self.num_mix, ">= 0")
        require(self.num_query_mix >= 0, "num_query_mix", self.num_query_mix, ">= 0")
        require(self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, ">= 0")


class MoCHi(MoCo):
    """MoCHi pretraining (MoCo v2 + synthetic hard negatives after the warm-up).

    ``proxy_acc`` counts real negatives only. The report shows the synthetic negatives'
    similarities (listed in ``artifacts.json``) and marks the epoch mixing starts.
    """

    name = "mochi"
    Config = MoCHiConfig

    def __init__(self, cfg: dict[str, Any], data: DataBundle) -> None:
        super().__init__(cfg, data)
        c = self.config
        self.mochi = MoCHiLoss(
            temperature=c.temperature, num_hard=c.num_hard, num_mix=c.num_mix,
            num_query_mix=c.num_query_mix, exclude_same_instance=c.exclude_same_instance,
        )

    def loss_and_proxy(self, q: Tensor, k: Tensor, idx: Tensor, epoch: int
                       ) -> tuple[Tensor, Tensor]:
        loss = self.mochi(
            q, k, self.queue_snapshot(), queue_ids=self.queue.indices, query_ids=idx,
            mix=epoch >= self.config.warmup_epochs, generator=self.generator("mochi", q.device),
        )
        return loss, self.mochi.last_proxy

    def export_artifacts(self, run_dir: Path) -> RunArtifacts:
        art = super().export_artifacts(run_dir)
        c = self.config
        art.synthetic_negatives = {"num_hard": c.num_hard, "num_mix": c.num_mix,
                                   "num_query_mix": c.num_query_mix,
                                   "from_epoch": c.warmup_epochs}
        art.curve_markers = [{"epoch": c.warmup_epochs, "label": "MoCHi mixing starts",
                              "metrics": ["loss", "proxy_acc"]}]
        return art
