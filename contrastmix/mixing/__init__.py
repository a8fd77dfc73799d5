"""Mixing operators: the one Beta sampler of every mixing coefficient, MoCHi hard negatives,
C-Mixup partners, geodesic (slerp) mixup, input mixup and CutMix of a batch, and the index pairs
of the mixup geometry."""

from contrastmix.mixing.beta import sample_beta, sample_lambda
from contrastmix.mixing.cmixup import CMixupSampler, cmixup_partners, cmixup_probabilities, mix
from contrastmix.mixing.cutmix import cutmix_batch
from contrastmix.mixing.mixup import mixup_batch
from contrastmix.mixing.mochi import mochi_draws, mochi_logits, mochi_negatives
from contrastmix.mixing.pairs import sample_pairs
from contrastmix.mixing.slerp import slerp

__all__ = [
    "mochi_negatives", "mochi_logits", "mochi_draws",
    "CMixupSampler", "cmixup_partners", "cmixup_probabilities", "mix", "sample_beta",
    "sample_lambda", "slerp", "mixup_batch", "cutmix_batch", "sample_pairs",
]
