"""Losses: MoCo/MoCHi, SupCon/SupReMix/RnC, CLIP/m2-mix/M3CoL, mixup cross-entropy (one file per
idea).

Loss contracts. Every loss belongs to one of three families; the members of a family share one
call shape (the same leading positional arguments, hyper-parameters as keywords or module
arguments), check their inputs with one helper (:mod:`contrastmix.losses._contracts`: the same
wrong shape fails with the same one-line ``ValueError`` naming the argument) and come both as a
function and as an ``nn.Module`` of the same name that give the same value for the same inputs
and the same generator state:

=============  ====================================================  ==========================
Family         Call shape                                            Members (function, module)
=============  ====================================================  ==========================
Queue losses   ``(query [B, d], key [B, d], queue [K, d], *,         :func:`moco_infonce`,
               queue_ids [K] = None, query_ids [B] = None, ...)``    :class:`MoCoLoss`;
               (unit-norm rows; key and queue get no gradient)       :func:`mochi_loss`,
                                                                     :class:`MoCHiLoss`
View losses    ``(features [B, V, d], labels [B], ...)``             :func:`supcon_loss`,
               (``V`` views of ``B`` samples, one label per          :class:`SupConLoss`;
               sample; SupCon also takes ``labels=None``)            :func:`rnc_loss`,
                                                                     :class:`RnCLoss`;
                                                                     :func:`supremix_loss`,
                                                                     :class:`SupReMixLoss`
Paired losses  ``(a [B, d], b [B, d], ...)`` (row ``i`` of ``a``     :func:`clip_loss`,
               paired with row ``i`` of ``b``; M3CoL takes further   :class:`CLIPLoss`;
               modalities ``*more``)                                 :func:`m2mix_loss`,
                                                                     :class:`M2MixLoss`;
                                                                     :func:`m3col_loss`,
                                                                     :class:`M3CoLLoss`
=============  ====================================================  ==========================

Randomness is an explicit ``generator=`` keyword (MoCHi's mixing, SupReMix's hard negatives,
m2-mix's ``lam``, M3Co's coefficients; every Beta draw is
:func:`contrastmix.mixing.beta.sample_beta`). Training schedules are never a loss argument: a
method turns its epoch into a coefficient or a switch and passes that (MoCHi ``mix=``, m2-mix
``coef=``, M3CoL ``mixup=``).

Building blocks keep their family's leading arguments: :func:`moco_logits` (queue);
:func:`~contrastmix.losses.m2mix.m2mix_term`, :func:`unimodal_mix_loss`, :func:`m3co_loss` (one
M3Co direction with explicit draws ``beta``, ``perm``) and :func:`soft_clip_loss` (paired).
Outside the families: :func:`mixed_cross_entropy` (logits and two label sets) and the M3CoL
objective (:func:`m3col_total_loss`, :class:`M3CoLObjective`: classification heads plus
``L_contrast``).
"""

from contrastmix.losses.clip import CLIPLoss, clip_logits, clip_loss
from contrastmix.losses.m2mix import (
    M2MixLoss,
    m2mix_anchor_terms,
    m2mix_loss,
    m2mix_term,
    unimodal_mix_loss,
)
from contrastmix.losses.m3col import (
    M3CoLLoss,
    M3CoLObjective,
    m3co_loss,
    m3co_targets,
    m3col_loss,
    m3col_total_loss,
    random_derangement,
    soft_clip_loss,
)
from contrastmix.losses.mixed_ce import mixed_cross_entropy
from contrastmix.losses.mochi import MoCHiLoss, mochi_loss
from contrastmix.losses.moco import MoCoLoss, moco_infonce, moco_logits
from contrastmix.losses.rnc import RnCLoss, rnc_loss
from contrastmix.losses.supcon import SupConLoss, supcon_loss
from contrastmix.losses.supremix import SupReMixLoss, supremix_loss

__all__ = [
    "moco_logits", "moco_infonce", "MoCoLoss", "mochi_loss", "MoCHiLoss",
    "SupConLoss", "supcon_loss", "SupReMixLoss", "supremix_loss", "RnCLoss", "rnc_loss",
    "clip_logits", "clip_loss", "CLIPLoss", "m2mix_anchor_terms", "m2mix_term", "m2mix_loss",
    "unimodal_mix_loss", "M2MixLoss", "m3co_loss", "m3co_targets", "soft_clip_loss",
    "random_derangement", "m3col_loss", "M3CoLLoss", "M3CoLObjective", "m3col_total_loss",
    "mixed_cross_entropy",
]
