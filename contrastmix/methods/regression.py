"""Recipe schemas of the regression methods (METHODS.md §2, §3).

Contrastive pretraining on two views with a projector (``supremix``, ``rnc``, ``supcon`` on
binned labels) and the supervised baseline (``l1``: L1 regression from scratch with a linear
head, optionally with C-Mixup). Registered with :func:`contrastmix.config.register_method`;
the Lightning modules are in :mod:`contrastmix.train.regression`.

Label-unit knobs (``window``, ``cmixup_sigma``, ``bin_range``) are in the units of the
dataset's targets (degrees for ``rotated-digits``, time-scale units for ``mnist1d-reg``,
disease-progression units for ``diabetes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contrastmix.config import register_method

__all__ = ["SupReMixConfig", "RnCConfig", "SupConRegConfig", "L1Config", "REGRESSION_METHODS"]

#: Method names of this family (contrastive ones first).
REGRESSION_METHODS: tuple[str, ...] = ("supremix", "rnc", "supcon", "l1")


@dataclass
class SupReMixConfig:
    """SupReMix (Wu et al. 2023, "Mixup Your Own Pairs"; METHODS.md §2).

    Attributes:
        temperature: tau of the loss (0.5 in the paper; 0.3 also common).
        window: eps for hard positives, in label units (``.inf`` = every bracketing pair).
        negative_alpha: Beta ``(alpha, beta)`` of the anchor weight of hard negatives.
        hard_negatives / hard_positives / distance_weighting: The three SupReMix ingredients
            (all off = SupCon on exact labels).
        label_scale: Labels are divided by this before the loss, so that the distance weights
            ``1 + |y_i - y_c|`` are in units of ``label_scale`` (``window`` stays in raw label
            units; it is divided by the same factor).
    """

    name: str = "supremix"
    temperature: float = 0.5
    window: float = 5.0
    negative_alpha: list[float] = field(default_factory=lambda: [2.0, 8.0])
    hard_negatives: bool = True
    hard_positives: bool = True
    distance_weighting: bool = True
    label_scale: float = 1.0


@dataclass
class RnCConfig:
    """Rank-N-Contrast (Zha et al., NeurIPS 2023).

    Attributes:
        temperature: tau of ``s_ij = -||z_i - z_j|| / tau`` (the paper uses 2 on unnormalised
            512-d features; with L2-normalised projections distances are <= 2, so use a
            smaller tau).
        normalize: L2-normalise the projections before the loss.
    """

    name: str = "rnc"
    temperature: float = 0.2
    normalize: bool = True


@dataclass
class SupConRegConfig:
    """SupCon (Khosla et al., NeurIPS 2020) on equal-width bins of the regression label.

    Attributes:
        temperature: tau.
        num_bins: Number of equal-width label bins (the positives of an anchor are the views in
            its bin).
        bin_range: ``[low, high]`` of the bins; empty = the training labels' min and max.
    """

    name: str = "supcon"
    temperature: float = 0.1
    num_bins: int = 10
    bin_range: list[float] = field(default_factory=list)


@dataclass
class L1Config:
    """Supervised L1 regression from scratch (backbone + linear head), optional C-Mixup.

    Attributes:
        augment: Apply the dataset's view augmentation (once) to training inputs.
        standardize_target: Regress ``(y - mean) / std`` of the training labels (the head
            predicts in label units after un-standardising; the L1 loss is in standard units).
        cmixup: Mix inputs and labels with C-Mixup partners (Yao et al., NeurIPS 2022).
        cmixup_sigma: Bandwidth of the label kernel, in label units.
        mixup_alpha: ``lambda ~ Beta(alpha, alpha)``.
        mixup_per_sample: One lambda per sample instead of one per batch (the official code
            draws one per batch).
        cmixup_scope: ``"dataset"``: partners drawn from the whole training set (the paper;
            needs an in-memory dataset); ``"batch"``: from the current batch.
        cmixup_window: Restrict each partner softmax to the ``K`` nearest labels (``0`` =
            exact).
    """

    name: str = "l1"
    augment: bool = True
    standardize_target: bool = True
    cmixup: bool = False
    cmixup_sigma: float = 1.0
    mixup_alpha: float = 2.0
    mixup_per_sample: bool = False
    cmixup_scope: str = "dataset"
    cmixup_window: int = 0


register_method("supremix", SupReMixConfig)
register_method("rnc", RnCConfig)
register_method("supcon", SupConRegConfig)
register_method("l1", L1Config)
