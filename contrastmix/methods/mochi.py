"""MoCHi: MoCo v2 with hard negative mixing (docs/methods.md §1).

Kalantidis et al., "Hard Negative Mixing for Contrastive Learning", NeurIPS 2020.

After ``warmup_epochs`` epochs of plain MoCo, each query also sees ``s`` synthetic negatives
mixed from pairs of its ``N`` hardest queue rows and ``s'`` mixed from the query itself and one
hard row (:class:`contrastmix.losses.mochi.MoCHiLoss`; the mixtures are never materialised).
The mixing draws come from this method's own seeded generator (``mochi``), saved in the
checkpoint, never from torch's global one: a MoCo and a MoCHi run of one seed draw the same
augmented views at every step, warm-up or not (their seeds pair).

``hard_set_oracle: true`` is a diagnostic, not MoCHi: the queue stores the keys' class labels,
and rows of the query's class are left out of its hard set before mixing (they stay negatives
in the denominator), which measures how much same-class "false negatives" in the hard set cost.
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
        hard_set_oracle: Class oracle (a diagnostic that uses labels): queue rows whose stored
            class label equals the query's are left out of its hard set (not out of the
            denominator). Classification data only.
    """

    name: str = "mochi"
    num_hard: int = 1024
    num_mix: int = 1024
    num_query_mix: int = 128
    warmup_epochs: int = 10
    hard_set_oracle: bool = False

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
        if c.hard_set_oracle and data.task != "classification":
            raise ValueError(
                "`method.hard_set_oracle` leaves the query's class out of its hard set and "
                f"needs class labels; dataset '{cfg['data']['name']}' is a {data.task} dataset"
            )
        self.mochi = MoCHiLoss(
            temperature=c.temperature, num_hard=c.num_hard, num_mix=c.num_mix,
            num_query_mix=c.num_query_mix, exclude_same_instance=c.exclude_same_instance,
        )

    def loss_and_proxy(self, q: Tensor, k: Tensor, idx: Tensor, epoch: int, y: Tensor
                       ) -> tuple[Tensor, Tensor]:
        labels = ({"queue_labels": self.queue.labels, "query_labels": y}
                  if self.config.hard_set_oracle else {})
        loss = self.mochi(
            q, k, self.queue_snapshot(), queue_ids=self.queue.indices, query_ids=idx,
            mix=epoch >= self.config.warmup_epochs, generator=self.generator("mochi", q.device),
            **labels,
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
