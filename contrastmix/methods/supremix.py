"""SupReMix: supervised contrastive regression with mixed hard pairs (docs/methods.md §2).

Wu et al., "Mixup Your Own Pairs" (SupReMix), 2023.

Two views of every sample are encoded by backbone + projector (the backbone alone with
``projector: false``) and L2-normalised (``[B, 2, d]``). The loss
(:class:`contrastmix.losses.supremix.SupReMixLoss`) is SupCon on exact labels with three
additions: hard negatives mixed from the anchor and a view of another label (anchor weight
``a ~ Beta(alpha, beta)``), hard positives mixed from two views whose labels bracket the
anchor's within ``window``, and denominator weights ``1 + |y_i - y_c|``. The Beta draws come
from this method's seeded ``loss`` generator, the same on every DDP rank (the loss sees the
gathered global batch) and saved in the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor, nn

from contrastmix.losses.supremix import SupReMixLoss
from contrastmix.methods._contrastive_regression import ContrastiveRegression
from contrastmix.methods.base import MethodConfig, require

__all__ = ["SupReMixConfig", "SupReMix"]


@dataclass
class SupReMixConfig(MethodConfig):
    """SupReMix settings (the recipe's ``method`` section).

    Label-unit values (``window``) are in the units of the dataset's targets (degrees for
    ``rotated-digits``, time-scale units for ``mnist1d-reg``, disease-progression units for
    ``diabetes``).

    Attributes:
        temperature: τ of the loss (0.5 in the paper; 0.3 also common).
        window: ε for hard positives, in label units (``.inf`` = every bracketing pair).
        negative_alpha: Beta ``[alpha, beta]`` of the anchor weight of hard negatives.
        hard_negatives: Add the anchor-inclusive mixtures as negatives.
        hard_positives: Add the label-bracketing mixtures as positives.
        distance_weighting: Weight denominator terms by ``1 + |y_i - y_c|``. With all three
            switches off the loss is SupCon on exact labels; ``hard_negatives`` and
            ``hard_positives`` off with it on is the no-mixture ablation (same encoder and
            loss, no mixtures), with it off too the plain SupCon control.
        label_scale: Labels are divided by this before the loss, so that the distance weights
            are in units of ``label_scale`` (``window`` stays in raw label units; it is divided
            by the same factor).
        projector: Build the projection head and apply the loss to its (normalised) output;
            ``false`` applies it to the L2-normalised backbone features.
    """

    name: str = "supremix"
    temperature: float = 0.5
    window: float = 5.0
    negative_alpha: list[float] = field(default_factory=lambda: [2.0, 8.0])
    hard_negatives: bool = True
    hard_positives: bool = True
    distance_weighting: bool = True
    label_scale: float = 1.0
    projector: bool = True
    infinite_ok: ClassVar[tuple[str, ...]] = ("window",)

    def check(self) -> None:
        require(self.temperature > 0, "temperature", self.temperature, "> 0")
        require(self.window > 0, "window", self.window, "> 0 (.inf for no limit)")
        na = list(self.negative_alpha)
        require(len(na) == 2 and all(a > 0 for a in na), "negative_alpha", na,
                "[alpha, beta] with both > 0")
        require(self.label_scale > 0, "label_scale", self.label_scale, "> 0")


class SupReMix(ContrastiveRegression):
    """SupReMix pretraining on a regression dataset.

    Logs ``train_loss`` and ``view_cosine``; leaves the projector, if any (``projector.pt``).
    """

    name = "supremix"
    Config = SupReMixConfig

    def wants_projector(self) -> bool:
        return bool(self.config.projector)

    def make_loss(self) -> nn.Module:
        c = self.config
        return SupReMixLoss(
            temperature=c.temperature, window=float(c.window) / c.label_scale,
            negative_alpha=(float(c.negative_alpha[0]), float(c.negative_alpha[1])),
            hard_negatives=c.hard_negatives, hard_positives=c.hard_positives,
            distance_weighting=c.distance_weighting,
        )

    def loss_labels(self, y: Tensor) -> Tensor:
        """``y / label_scale`` (``[B]``, float)."""
        return y.float() / self.config.label_scale

    def compute_loss(self, feats: Tensor, labels: Tensor) -> Tensor:
        return self.loss_fn(feats, labels,
                            generator=self.generator("loss", feats.device, per_rank=False))
