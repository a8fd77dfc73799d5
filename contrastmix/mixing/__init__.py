"""Mixing operators: MoCHi hard negatives, C-Mixup partners, geodesic (slerp) mixup."""

from contrastmix.mixing.cmixup import (
    CMixupSampler,
    cmixup_partners,
    cmixup_probabilities,
    mix,
    sample_beta,
    sample_lambda,
)
from contrastmix.mixing.mochi import mochi_draws, mochi_logits, mochi_negatives
from contrastmix.mixing.slerp import slerp

__all__ = [
    "mochi_negatives", "mochi_logits", "mochi_draws",
    "CMixupSampler", "cmixup_partners", "cmixup_probabilities", "mix", "sample_beta",
    "sample_lambda", "slerp",
]
