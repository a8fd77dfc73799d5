"""Recipe schemas of the supervised methods: ERM and mixup (METHODS.md §8).

Supervised training of ``backbone -> Linear(output_dim, num_classes)`` with cross-entropy, into
the terminal phase of training (Papyan, Han & Donoho, PNAS 2020), to compare neural collapse
(NC1-NC4) under plain ERM and under mixup ("Pushing Boundaries: Mixup's Influence on Neural
Collapse", Fisher, Meng & Papyan, ICLR 2024). Registered with
:func:`contrastmix.config.register_method`; the Lightning module is
:class:`contrastmix.train.supervised.SupervisedModule`.
"""

from __future__ import annotations

from dataclasses import dataclass

from contrastmix.config import register_method

__all__ = ["ERMConfig", "MixupConfig", "SUPERVISED_METHODS"]

#: Method names of this family.
SUPERVISED_METHODS: tuple[str, ...] = ("erm", "mixup")


@dataclass
class ERMConfig:
    """Empirical risk minimisation: cross-entropy on clean inputs.

    Attributes:
        label_smoothing: Label smoothing of the cross-entropy (0 = none; in ``[0, 1)``).
        augment: Apply the dataset's ``batch_augment`` (once) to training inputs. Off by
            default: the collapse recipes train on clean inputs (plus mixup).
        save_features_every: Every this many epochs (and after the last one), compute NC1-NC4
            of the clean train split, train/test accuracy, and write
            ``features/epoch_XXX.pt``; 0 = off.
        feature_samples: Train samples (a fixed seeded subset) saved in each
            ``features/epoch_XXX.pt``; NC metrics use the whole train split.
        geometry_pairs: Same-class and different-class input pairs (each) mixed at every
            ``lambda`` of the grid for ``mixup_geometry.json`` at the end (0 = skip).
        geometry_bins: ``lambda`` bins of the mixup geometry; the grid is their centres.
    """

    name: str = "erm"
    label_smoothing: float = 0.0
    augment: bool = False
    save_features_every: int = 0
    feature_samples: int = 1000
    geometry_pairs: int = 500
    geometry_bins: int = 10


@dataclass
class MixupConfig(ERMConfig):
    """Input mixup (Zhang et al., ICLR 2018) and CutMix (Yun et al., ICCV 2019).

    Each batch is mixed with a permutation of itself, ``x~ = lam x + (1 - lam) x[perm]``,
    ``lam ~ Beta(mixup_alpha, mixup_alpha)`` (one draw per batch), and the loss is
    ``lam CE(f(x~), y) + (1 - lam) CE(f(x~), y[perm])``.

    Attributes:
        mixup_alpha: Beta concentration (> 0; 1 = uniform ``lam``).
        cutmix_prob: Probability that a batch uses CutMix (a box of ``x[perm]`` pasted into
            ``x``; a segment for 1-D signals) instead of input mixup; 0 for signals, e.g. 0.5
            for image datasets such as ``digits``.
    """

    name: str = "mixup"
    mixup_alpha: float = 1.0
    cutmix_prob: float = 0.0


register_method("erm", ERMConfig)
register_method("mixup", MixupConfig)
