"""Losses: MoCo/MoCHi, SupCon/SupReMix/RnC, CLIP/m2-mix/M3CoL, mixup cross-entropy (one file per
idea)."""

from contrastmix.losses.clip import clip_logits, clip_loss
from contrastmix.losses.m2mix import M2MixLoss, m2mix_loss, m2mix_terms, unimodal_mix_loss
from contrastmix.losses.m3col import (
    M3CoLLoss,
    M3CoLObjective,
    m3co_loss,
    m3co_targets,
    m3col_total_loss,
    random_derangement,
    soft_clip_loss,
)
from contrastmix.losses.mixed_ce import mixed_cross_entropy
from contrastmix.losses.mochi import MoCHiLoss
from contrastmix.losses.moco import moco_infonce, moco_logits
from contrastmix.losses.rnc import RnCLoss, rnc_loss
from contrastmix.losses.supcon import SupConLoss, supcon_loss
from contrastmix.losses.supremix import SupReMixLoss, supremix_loss

__all__ = [
    "moco_logits", "moco_infonce", "MoCHiLoss",
    "SupConLoss", "supcon_loss", "SupReMixLoss", "supremix_loss", "RnCLoss", "rnc_loss",
    "clip_logits", "clip_loss", "m2mix_terms", "m2mix_loss", "unimodal_mix_loss", "M2MixLoss",
    "m3co_loss", "m3co_targets", "soft_clip_loss", "random_derangement", "M3CoLLoss",
    "M3CoLObjective", "m3col_total_loss", "mixed_cross_entropy",
]
