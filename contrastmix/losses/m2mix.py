"""Geodesic multimodal mixup (m2-mix).

Oh et al., "Geodesic Multi-Modal Mixup for Robust Fine-Tuning", NeurIPS 2023. See
docs/methods.md §5.

Hard negatives are generated on the hypersphere between the two modalities,
``M_j = slerp(I_j, T_j, lam)`` (``lam`` weights the image), and every anchor must still prefer its
own pair over these mixtures::

    image anchor i:  logits_j = (I_i . T_i if j == i else I_i . M_j) / tau_m,  target i
    text anchor i:   logits_j = (T_i . I_i if j == i else T_i . M_j) / tau_m,  target i
    L_m2 = CE_image + CE_text          (or their mean)
    L = L_clip + c * w_m * L_m2

``c`` is the caller's schedule coefficient (the m2-mix method uses ``1 / (epoch + 1)``,
:mod:`contrastmix.methods.m2mix`); the loss itself does not know about epochs.

Names: :func:`m2mix_loss` / :class:`M2MixLoss` are the whole loss ``L`` (a paired loss,
``(image, text, ...)``); :func:`m2mix_term` is ``L_m2`` and :func:`m2mix_anchor_terms` its
image-anchor and text-anchor parts; :func:`unimodal_mix_loss` is the optional V-mix / L-mix
term. ``lam`` comes from :func:`contrastmix.mixing.beta.sample_beta`.

With ``lam = 0`` (``M = T``) the image-anchor term is CLIP's image->text cross-entropy at
``tau_m``; with ``lam = 1`` (``M = I``) the text-anchor term is CLIP's text->image one.

Distributed: as :func:`contrastmix.losses.clip.clip_loss`, the local anchors are scored against
the mixtures of all ranks (gathered with gradient; targets offset by ``rank * B``). The batch
``lam`` drawn by :class:`M2MixLoss` is broadcast from rank 0 so every rank mixes alike.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from contrastmix._validation import check_positive
from contrastmix.distributed import gather_with_grad, is_distributed, rank
from contrastmix.losses._contracts import check_pair_inputs
from contrastmix.losses.clip import check_temperature, clip_loss, prepare_pair
from contrastmix.mixing.beta import sample_beta
from contrastmix.mixing.slerp import slerp_unit

__all__ = [
    "m2mix_loss", "M2MixLoss", "M2MixOutput", "m2mix_term", "m2mix_anchor_terms",
    "unimodal_mix_loss",
]

Reduction = Literal["sum", "mean"]


def _mixed_anchor_ce(
    anchor: Tensor, positive: Tensor, mixed_all: Tensor, targets: Tensor, tau: float
) -> Tensor:
    """CE of ``[anchor_i . positive_i if j == target_i else anchor_i . M_j] / tau``."""
    logits = anchor @ mixed_all.T
    pos = (anchor * positive).sum(dim=-1, keepdim=True)
    is_pos = F.one_hot(targets, logits.shape[1]).bool()
    logits = torch.where(is_pos, pos, logits) / tau
    return F.cross_entropy(logits, targets)


def m2mix_anchor_terms(
    image: Tensor,
    text: Tensor,
    lam: float | Tensor,
    mix_temperature: float = 0.07,
    *,
    detach_mix: bool = False,
    gather_distributed: bool = True,
    normalize: bool = False,
) -> tuple[Tensor, Tensor]:
    """Image-anchor and text-anchor cross-entropies of the m2-mix term (docs/methods.md §5).

    Args:
        image: ``[B, d]`` L2-normalised image embeddings.
        text: ``[B, d]`` L2-normalised text embeddings, row ``i`` paired with ``image[i]``.
        lam: Mixing weight of the image in ``[0, 1]``: a float (one per batch, as in the paper)
            or a ``[B]`` tensor (one per pair).
        mix_temperature: τ_m > 0 (0.07), separate from the CLIP temperature.
        detach_mix: Treat the mixtures ``M`` as constants (no gradient through them).
        gather_distributed: Score local anchors against all ranks' mixtures (with gradient).
        normalize: L2-normalise the inputs here; when False unnormalised inputs raise.

    Returns:
        ``(ce_image_anchor, ce_text_anchor)``, two fp32 scalars (mean over the local rows).

    Raises:
        ValueError: on mismatched shapes, NaN, non-unit-norm inputs, ``lam`` outside ``[0, 1]``,
            a non-positive temperature, or an antipodal image/text pair (slerp undefined).
    """
    check_positive("mix_temperature", mix_temperature)
    check_pair_inputs(image, text, ("image", "text"))
    with torch.autocast(device_type=image.device.type, enabled=False):
        img, txt = prepare_pair(image, text, normalize=normalize, checked=True)
        mixed = slerp_unit(img, txt, lam)  # checked at the input dtype by prepare_pair
        if detach_mix:
            mixed = mixed.detach()
        offset = 0
        if gather_distributed and is_distributed():
            mixed_all = gather_with_grad(mixed)
            offset = rank() * img.shape[0]
        else:
            mixed_all = mixed
        targets = torch.arange(img.shape[0], device=img.device) + offset
        ce_img = _mixed_anchor_ce(img, txt, mixed_all, targets, mix_temperature)
        ce_txt = _mixed_anchor_ce(txt, img, mixed_all, targets, mix_temperature)
    return ce_img, ce_txt


def m2mix_term(
    image: Tensor,
    text: Tensor,
    lam: float | Tensor,
    mix_temperature: float = 0.07,
    *,
    reduction: Reduction = "sum",
    detach_mix: bool = False,
    gather_distributed: bool = True,
    normalize: bool = False,
) -> Tensor:
    """The m2-mix term ``L_m2``: image-anchor plus text-anchor cross-entropy (docs/methods.md §5).

    Args:
        image: ``[B, d]`` L2-normalised image embeddings.
        text: ``[B, d]`` L2-normalised text embeddings.
        lam: Image weight of the mixtures, float or ``[B]`` tensor in ``[0, 1]``.
        mix_temperature: τ_m (0.07).
        reduction: ``"sum"`` (default, the paper) or ``"mean"`` of the two anchor terms.
        detach_mix: Detach the mixtures.
        gather_distributed: Gather mixtures from all ranks with gradient.
        normalize: L2-normalise the inputs here instead of requiring unit norm.

    Returns:
        Scalar fp32 loss.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"`reduction` must be 'sum' or 'mean', got {reduction!r}")
    ce_img, ce_txt = m2mix_anchor_terms(
        image,
        text,
        lam,
        mix_temperature,
        detach_mix=detach_mix,
        gather_distributed=gather_distributed,
        normalize=normalize,
    )
    total = ce_img + ce_txt
    return total if reduction == "sum" else 0.5 * total


def unimodal_mix_loss(
    anchor: Tensor,
    candidates: Tensor,
    lam: float | Tensor,
    mix_temperature: float = 0.07,
    *,
    gather_distributed: bool = True,
    normalize: bool = False,
) -> Tensor:
    """Uni-modal geodesic mixup (V-mix with image anchors, L-mix with text anchors).

    ``A~_i = slerp(A_i, A_p(i), lam)`` with the partner ``p(i) = i - 1 (mod B)`` (the batch is
    already in random order), scored against the other modality with soft targets ``lam`` on
    ``C_i`` and ``1 - lam`` on ``C_p(i)``. Partners are taken within the local batch.

    Args:
        anchor: ``[B, d]`` L2-normalised embeddings of the mixed modality.
        candidates: ``[B, d]`` L2-normalised embeddings of the other modality.
        lam: Float or ``[B]`` tensor in ``[0, 1]``.
        mix_temperature: τ_m.
        gather_distributed: Score against all ranks' candidates (with gradient).
        normalize: L2-normalise the inputs here.

    Returns:
        Scalar fp32 soft-target cross-entropy (mean over local rows).
    """
    check_positive("mix_temperature", mix_temperature)
    names = ("anchor", "candidates")
    check_pair_inputs(anchor, candidates, names)
    with torch.autocast(device_type=anchor.device.type, enabled=False):
        a, c = prepare_pair(anchor, candidates, normalize=normalize, names=names, checked=True)
        b = a.shape[0]
        partner = torch.roll(torch.arange(b, device=a.device), 1)
        mixed = slerp_unit(a, a[partner], lam)  # checked by prepare_pair
        offset = 0
        if gather_distributed and is_distributed():
            c_all = gather_with_grad(c)
            offset = rank() * b
        else:
            c_all = c
        logits = mixed @ c_all.T / mix_temperature
        lam_col = (
            lam.to(device=a.device, dtype=a.dtype, non_blocking=True).reshape(-1, 1)
            if isinstance(lam, Tensor)
            else torch.full((b, 1), float(lam), dtype=a.dtype, device=a.device)
        )
        rows = torch.arange(b, device=a.device)
        target = torch.zeros_like(logits)
        target[rows, rows + offset] += lam_col[:, 0]
        target[rows, partner + offset] += 1 - lam_col[:, 0]
        return -(target * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


class M2MixOutput(NamedTuple):
    """Terms of :class:`M2MixLoss` (all fp32 scalars; ``lam`` and ``coef`` are floats)."""

    loss: Tensor
    clip: Tensor
    m2: Tensor
    vmix: Tensor
    lmix: Tensor
    lam: float
    coef: float


def _check_hparams(
    temperature: float | Tensor,
    mix_temperature: float,
    alpha: float,
    weight: float,
    reduction: str,
    vmix_weight: float,
    lmix_weight: float,
) -> None:
    check_temperature("temperature", temperature)
    check_positive("mix_temperature", mix_temperature)
    check_positive("alpha", alpha)
    check_positive("weight", weight, allow_zero=True)
    check_positive("vmix_weight", vmix_weight, allow_zero=True)
    check_positive("lmix_weight", lmix_weight, allow_zero=True)
    if reduction not in ("sum", "mean"):
        raise ValueError(f"`reduction` must be 'sum' or 'mean', got {reduction!r}")


def _draw_lam(
    alpha: float,
    generator: torch.Generator | None,
    gather_distributed: bool,
    device: str | torch.device,
) -> float:
    """``lam ~ Beta(alpha, alpha)`` (:func:`~contrastmix.mixing.beta.sample_beta`, float64 on
    the generator's device); under DDP rank 0's draw is broadcast to all ranks."""
    lam = float(sample_beta((), alpha, generator=generator, dtype=torch.float64))
    if gather_distributed and is_distributed():
        t = torch.tensor([lam], dtype=torch.float64, device=device)
        dist.broadcast(t, src=0)
        lam = float(t.item())
    return lam


def _m2mix(
    image: Tensor,
    text: Tensor,
    temperature: float | Tensor,
    mix_temperature: float,
    alpha: float,
    weight: float,
    reduction: Reduction,
    detach_mix: bool,
    vmix_weight: float,
    lmix_weight: float,
    gather_distributed: bool,
    normalize: bool,
    coef: float,
    lam: float | None,
    generator: torch.Generator | None,
) -> M2MixOutput:
    """All terms of :func:`m2mix_loss` on checked hyper-parameters."""
    coef = float(coef)
    if not coef >= 0:
        raise ValueError(f"`coef` must be >= 0, got {coef}")
    l_clip = clip_loss(
        image, text, temperature, gather_distributed=gather_distributed, normalize=normalize
    )
    zero = l_clip.new_zeros(())
    mixing = coef > 0 and (weight > 0 or vmix_weight > 0 or lmix_weight > 0)
    if not mixing:
        return M2MixOutput(l_clip, l_clip, zero, zero, zero, float("nan"), coef)
    if lam is None:
        lam = _draw_lam(alpha, generator, gather_distributed, image.device)
    elif not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"`lam` must lie in [0, 1], got {lam}")
    common = {"gather_distributed": gather_distributed, "normalize": normalize}
    l_m2 = (
        m2mix_term(image, text, lam, mix_temperature, reduction=reduction,
                   detach_mix=detach_mix, **common)
        if weight > 0
        else zero
    )
    l_v = (
        unimodal_mix_loss(image, text, lam, mix_temperature, **common)
        if vmix_weight > 0
        else zero
    )
    l_l = (
        unimodal_mix_loss(text, image, lam, mix_temperature, **common)
        if lmix_weight > 0
        else zero
    )
    total = l_clip + coef * (weight * l_m2 + vmix_weight * l_v + lmix_weight * l_l)
    return M2MixOutput(total, l_clip, l_m2, l_v, l_l, float(lam), coef)


def m2mix_loss(
    image: Tensor,
    text: Tensor,
    temperature: float | Tensor = 0.01,
    *,
    mix_temperature: float = 0.07,
    alpha: float = 0.5,
    weight: float = 0.01,
    coef: float = 1.0,
    lam: float | None = None,
    generator: torch.Generator | None = None,
    detach_mix: bool = False,
    reduction: Reduction = "sum",
    vmix_weight: float = 0.0,
    lmix_weight: float = 0.0,
    gather_distributed: bool = True,
    normalize: bool = False,
) -> Tensor:
    """m2-mix loss ``L_clip(τ) + coef * (w_m L_m2 + w_v L_vmix + w_l L_lmix)``
    (Oh et al., NeurIPS 2023; docs/methods.md §5).

    The function form of :class:`M2MixLoss` (its constructor arguments plus those of its
    :meth:`~M2MixLoss.forward`; the same value for the same ``lam`` or generator state).

    Args:
        image: ``[B, d]`` image embeddings (unit norm unless ``normalize``).
        text: ``[B, d]`` text embeddings, row ``i`` paired with ``image[i]``.
        temperature: CLIP τ (0.01), a float or a 0-d tensor (learnable temperature).
        mix_temperature: τ_m of the mixed terms (0.07).
        alpha: ``lam ~ Beta(alpha, alpha)`` (0.5), one draw per batch shared by all terms
            (broadcast from rank 0 under DDP).
        weight: w_m of the m2-mix term ``L_m2`` (0.01).
        coef: Multiplier of the mixed terms (``>= 0``; 0 skips them and draws nothing), e.g.
            the method's schedule ``1 / (epoch + 1)``.
        lam: Use this mixing weight in ``[0, 1]`` instead of drawing one.
        generator: Random generator of the ``lam`` draw.
        detach_mix: Detach the mixtures of ``L_m2``.
        reduction: ``"sum"`` or ``"mean"`` of the two anchor terms of ``L_m2``.
        vmix_weight: w_v of the optional V-mix (image-only) term; 0 disables it.
        lmix_weight: w_l of the optional L-mix (text-only) term; 0 disables it.
        gather_distributed: Use all ranks' negatives (gathered with gradient).
        normalize: L2-normalise inputs here; when False unnormalised inputs raise.

    Returns:
        Scalar fp32 loss.
    """
    _check_hparams(temperature, mix_temperature, alpha, weight, reduction, vmix_weight,
                   lmix_weight)
    return _m2mix(
        image, text, temperature, float(mix_temperature), float(alpha), float(weight),
        reduction, bool(detach_mix), float(vmix_weight), float(lmix_weight),
        bool(gather_distributed), bool(normalize), coef, lam, generator,
    ).loss


class M2MixLoss(nn.Module):
    """CLIP loss plus the weighted m2-mix term (Oh et al., NeurIPS 2023; docs/methods.md §5).

    ``L = L_clip(τ) + coef * (weight * L_m2 + vmix_weight * L_vmix + lmix_weight * L_lmix)``
    with ``coef`` given per call (a schedule over epochs is the caller's) and one ``lam ~
    Beta(alpha, alpha)`` per batch shared by all terms (broadcast from rank 0 under DDP).
    :func:`m2mix_loss` is the function form (a paired loss: ``(image, text, ...)``).

    Args:
        temperature: CLIP τ (0.01).
        mix_temperature: τ_m of the mixed terms (0.07).
        alpha: Beta parameter of ``lam`` (0.5).
        weight: w_m of the m2-mix term (0.01; the paper uses [0.001, 0.05]).
        detach_mix: Detach the mixtures of the m2-mix term.
        reduction: ``"sum"`` or ``"mean"`` of the two anchor terms of ``L_m2``.
        vmix_weight: Weight of the optional V-mix (image-only) term; 0 disables it.
        lmix_weight: Weight of the optional L-mix (text-only) term; 0 disables it.
        gather_distributed: Use all ranks' negatives (gathered with gradient).
        normalize: L2-normalise inputs here; when False unnormalised inputs raise.

    Shapes:
        ``image [B, d]``, ``text [B, d]`` -> scalar.
    """

    def __init__(
        self,
        temperature: float = 0.01,
        mix_temperature: float = 0.07,
        alpha: float = 0.5,
        weight: float = 0.01,
        *,
        detach_mix: bool = False,
        reduction: Reduction = "sum",
        vmix_weight: float = 0.0,
        lmix_weight: float = 0.0,
        gather_distributed: bool = True,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        _check_hparams(temperature, mix_temperature, alpha, weight, reduction, vmix_weight,
                       lmix_weight)
        self.temperature = float(temperature)
        self.mix_temperature = float(mix_temperature)
        self.alpha = float(alpha)
        self.weight = float(weight)
        self.detach_mix = bool(detach_mix)
        self.reduction: Reduction = reduction
        self.vmix_weight = float(vmix_weight)
        self.lmix_weight = float(lmix_weight)
        self.gather_distributed = bool(gather_distributed)
        self.normalize = bool(normalize)

    def sample_lam(
        self, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> float:
        """Draw ``lam ~ Beta(alpha, alpha)``; under DDP rank 0's draw is broadcast to all."""
        return _draw_lam(self.alpha, generator, self.gather_distributed, device)

    def compute(
        self,
        image: Tensor,
        text: Tensor,
        *,
        coef: float = 1.0,
        lam: float | None = None,
        temperature: float | Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> M2MixOutput:
        """All terms of the loss (see :class:`M2MixOutput`).

        Args:
            image: ``[B, d]`` image embeddings (unit norm unless ``normalize``).
            text: ``[B, d]`` text embeddings.
            coef: Multiplier of the mixed terms (``>= 0``; 0 skips them), e.g. a schedule.
            lam: Use this mixing weight instead of drawing one.
            temperature: Override the CLIP τ (e.g. a learnable 0-d tensor).
            generator: Random generator of the ``lam`` draw.
        """
        return _m2mix(
            image, text, self.temperature if temperature is None else temperature,
            self.mix_temperature, self.alpha, self.weight, self.reduction, self.detach_mix,
            self.vmix_weight, self.lmix_weight, self.gather_distributed, self.normalize,
            coef, lam, generator,
        )

    def forward(
        self,
        image: Tensor,
        text: Tensor,
        *,
        coef: float = 1.0,
        lam: float | None = None,
        temperature: float | Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Scalar total loss; see :meth:`compute` for the arguments and the separate terms."""
        return self.compute(
            image, text, coef=coef, lam=lam, temperature=temperature, generator=generator
        ).loss
