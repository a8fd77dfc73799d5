"""M3Co: multimodal mixup contrastive loss, its SoftCLIP phase and the M3CoL training objective.

Kumar, Singhal et al., "M3CoL: Harnessing Shared Relations via Multimodal Mixup Contrastive
Learning for Multimodal Classification", 2024. See docs/methods.md §6.

For a pair of modalities (``p`` mixed, ``q`` not), a derangement ``perm`` of the batch and one
coefficient ``beta_i`` per sample::

    p~_i = beta_i p_i + (1 - beta_i) p_perm(i)
    S    = normalize(p~) normalize(q)^T / tau                      (tau = 0.1)
    T[i, i] = beta_i,  T[i, perm(i)] += 1 - beta_i                 (rows sum to 1)
    L    = 1/2 [ mean_i CE_soft(S_i., T_i.) + mean_j CE_soft(S_.j, T_.j) ]

``beta_i ~ Beta(0.15, 0.15)`` is applied with probability 0.5 (else ``beta_i = 1``). The column
targets ``T_.j`` are used as they are (they need not sum to 1), as in the authors' code. With all
``beta = 1`` the loss is the symmetric InfoNCE (CLIP) loss at ``tau``.

Later in training the contrastive term switches to SoftCLIP (targets ``softmax(q^ q^T / 0.125)``
against ``p^ q^T / 0.125``, both directions); :class:`M3CoLLoss` takes the phase per call
(``mixup``), the epoch rule is the method's (:mod:`contrastmix.methods.m3col`). The model's
total loss is ``CE(fusion) + sum_m CE(unimodal_m) + 0.1 * L_contrast``.

Names: :func:`m3col_loss` / :class:`M3CoLLoss` are ``L_contrast`` (a paired loss,
``(a, b, ...)``: M3Co in both directions for two modalities, a cycle for more, or SoftCLIP),
with its own draws; :func:`m3co_loss` is one M3Co direction with explicit draws
(:func:`sample_m3co_mixing`, whose ``beta_i`` come from
:func:`contrastmix.mixing.beta.sample_beta`); :func:`soft_clip_loss` one SoftCLIP pair.

Inputs here are the raw (unnormalised) modality features: the loss mixes them *before*
normalising, as the method prescribes, and normalises internally.

Distributed: with ``gather_distributed=True`` each rank mixes within its local batch (the
partner permutation is local), then scores its local rows against the normalised embeddings of
all ranks, gathered with gradient. The mean of the per-rank losses equals the single-process
loss on the concatenated batch with the block-diagonal permutation (see
``tests/test_clip_ddp.py``); gradient scaling as for :func:`contrastmix.losses.clip.clip_loss`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastmix._numerics import unit_rows
from contrastmix._validation import check_positive, check_same_length, check_tensor
from contrastmix.distributed import gather_with_grad, is_distributed, rank
from contrastmix.losses._contracts import check_pair_inputs
from contrastmix.mixing.beta import sample_beta

__all__ = [
    "random_derangement",
    "sample_m3co_mixing",
    "m3co_targets",
    "m3co_loss",
    "soft_clip_loss",
    "m3col_loss",
    "M3CoLLoss",
    "m3col_total_loss",
    "M3CoLObjective",
    "M3CoLTerms",
]


def random_derangement(
    n: int,
    *,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> Tensor:
    """A uniformly random derangement of ``range(n)`` (no ``i`` maps to itself).

    Rejection sampling of ``torch.randperm`` (about ``e`` draws on average).

    Args:
        n: Size, ``>= 2`` (no derangement of one element exists).
        generator: Random generator (its device is used for the draws).
        device: Device of the returned tensor (default: the generator's, else CPU).

    Returns:
        ``[n]`` int64 permutation with ``perm[i] != i`` for every ``i``.

    Raises:
        ValueError: if ``n < 2``.
    """
    if n < 2:
        raise ValueError(
            f"a derangement needs at least 2 samples, got batch size {n}: M3Co mixes every "
            "sample with another one of the batch"
        )
    gen_device = generator.device if generator is not None else torch.device("cpu")
    ar = torch.arange(n, device=gen_device)
    for _ in range(1000):
        perm = torch.randperm(n, generator=generator, device=gen_device)
        if not bool((perm == ar).any()):
            break
    else:  # pragma: no cover - probability ~ (1 - 1/e)^1000
        raise RuntimeError("failed to draw a derangement")
    return perm.to(device if device is not None else gen_device, non_blocking=True)


def sample_m3co_mixing(
    batch_size: int,
    beta_param: float = 0.15,
    mix_prob: float = 0.5,
    *,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw the M3Co mixing coefficients and partners for one batch.

    Draw order (for exact reproduction with a generator): derangement, then
    ``Beta(beta_param, beta_param)`` for every sample
    (:func:`~contrastmix.mixing.beta.sample_beta`), then the ``U(0, 1) < mix_prob`` selection.

    Args:
        batch_size: ``B >= 2``.
        beta_param: Beta parameter (0.15).
        mix_prob: Probability that a sample is mixed (0.5); unmixed samples get ``beta = 1``.
        generator: Random generator.
        device: Device of the returned tensors.

    Returns:
        ``(beta [B] float32, perm [B] int64)``.
    """
    check_positive("beta_param", beta_param)
    if not 0.0 <= mix_prob <= 1.0:
        raise ValueError(f"`mix_prob` must lie in [0, 1], got {mix_prob}")
    perm = random_derangement(batch_size, generator=generator)
    gen_device = perm.device
    beta = sample_beta(batch_size, beta_param, generator=generator, device=gen_device,
                       dtype=torch.float64)
    select = torch.rand(batch_size, generator=generator, device=gen_device) < mix_prob
    beta = torch.where(select, beta, torch.ones_like(beta)).float()
    out_device = device if device is not None else gen_device
    return beta.to(out_device, non_blocking=True), perm.to(out_device, non_blocking=True)


def _check_mixing(beta: Tensor, perm: Tensor, b: int) -> None:
    check_tensor("beta", beta, ndim=1, floating=True)
    check_tensor("perm", perm, ndim=1)
    if beta.shape[0] != b or perm.shape[0] != b:
        raise ValueError(
            f"`beta` and `perm` must have one entry per row ({b}), got shapes "
            f"{tuple(beta.shape)} and {tuple(perm.shape)}"
        )
    if perm.is_floating_point() or perm.is_complex() or perm.dtype == torch.bool:
        raise ValueError(f"`perm` must be an integer tensor, got {perm.dtype}")
    if b < 2:
        raise ValueError(
            f"M3Co needs a batch of at least 2 samples (no derangement of 1), got batch size {b}"
        )
    lo, hi = float(beta.detach().min()), float(beta.detach().max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"`beta` must lie in [0, 1], got values in [{lo}, {hi}]")
    ar = torch.arange(b, device=perm.device)
    if not torch.equal(torch.sort(perm).values.to(ar.dtype), ar):
        raise ValueError(f"`perm` must be a permutation of range({b})")
    fixed = torch.nonzero(perm == ar).reshape(-1)
    if fixed.numel() > 0:
        raise ValueError(
            f"`perm` must be a derangement (no sample is its own partner); fixed point(s) at "
            f"{fixed[:10].tolist()}"
        )


def m3co_targets(beta: Tensor, perm: Tensor) -> Tensor:
    """Soft target matrix ``T[i, i] = beta_i``, ``T[i, perm(i)] += 1 - beta_i``.

    Args:
        beta: ``[B]`` coefficients in ``[0, 1]``.
        perm: ``[B]`` derangement.

    Returns:
        ``[B, B]`` fp32 (or wider) matrix whose rows sum to 1.
    """
    _check_mixing(beta, perm, beta.shape[0] if beta.ndim == 1 else -1)
    return _targets(beta, perm, beta.shape[0], 0, perm.device)


def _targets(beta: Tensor, perm: Tensor, n_cols: int, offset: int, device: torch.device) -> Tensor:
    """Rows of ``T`` for local samples against ``n_cols`` global columns (local cols at offset)."""
    b = beta.shape[0]
    dtype = torch.promote_types(beta.dtype, torch.float32)
    beta = beta.to(device=device, dtype=dtype, non_blocking=True)
    perm = perm.to(device=device, dtype=torch.long, non_blocking=True)
    rows = torch.arange(b, device=device)
    t = torch.zeros(b, n_cols, dtype=dtype, device=device)
    t.index_put_((rows, rows + offset), beta, accumulate=True)
    t.index_put_((rows, perm + offset), 1 - beta, accumulate=True)
    return t


def _soft_ce(logits: Tensor, target: Tensor) -> Tensor:
    """``mean_i -sum_j target_ij log_softmax(logits)_ij``."""
    return -(target * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def m3co_loss(
    p: Tensor,
    q: Tensor,
    beta: Tensor,
    perm: Tensor,
    temperature: float = 0.1,
    *,
    gather_distributed: bool = True,
) -> Tensor:
    """M3Co loss for one direction (``p`` mixed, ``q`` fixed) with explicit mixing draws.

    Args:
        p: ``[B, d]`` features of the mixed modality (raw; normalised after mixing).
        q: ``[B, d]`` features of the other modality (raw; normalised here).
        beta: ``[B]`` mixing coefficients in ``[0, 1]`` (1 = not mixed).
        perm: ``[B]`` derangement of the (local) batch: sample ``i`` is mixed with ``perm[i]``.
        temperature: τ (0.1).
        gather_distributed: Score the local rows against all ranks' embeddings (with gradient).

    Returns:
        Scalar fp32 loss ``1/2 [row-wise soft CE + column-wise soft CE]``.

    Raises:
        ValueError: on mismatched shapes, NaN
            (:func:`~contrastmix.losses._contracts.check_pair_inputs`), ``B < 2``, ``perm`` not
            a derangement, ``beta`` outside ``[0, 1]`` or a non-positive temperature.
    """
    check_pair_inputs(p, q, ("p", "q"))
    _check_mixing(beta, perm, p.shape[0])
    check_positive("temperature", temperature)
    return _m3co(p, q, beta, perm, float(temperature), gather_distributed)


def _m3co(
    p: Tensor, q: Tensor, beta: Tensor, perm: Tensor, temperature: float,
    gather_distributed: bool,
) -> Tensor:
    """:func:`m3co_loss` on checked inputs."""
    with torch.autocast(device_type=p.device.type, enabled=False):
        dtype = torch.promote_types(torch.promote_types(p.dtype, q.dtype), torch.float32)
        p32, q32 = p.to(dtype), q.to(dtype)
        b = p32.shape[0]
        # host draws to the device: copies that do not wait for it
        bcol = beta.to(device=p32.device, dtype=dtype, non_blocking=True).unsqueeze(1)
        perm = perm.to(device=p32.device, dtype=torch.long, non_blocking=True)
        p_mix = bcol * p32 + (1 - bcol) * p32[perm]
        p_hat = unit_rows(p_mix, dim=-1)
        q_hat = unit_rows(q32, dim=-1)
        offset = 0
        if gather_distributed and is_distributed():
            p_all, q_all = gather_with_grad(p_hat), gather_with_grad(q_hat)
            offset = rank() * b
        else:
            p_all, q_all = p_hat, q_hat
        n = q_all.shape[0]
        rows = torch.arange(b, device=p32.device)
        # Row-wise: local mixed anchors i against all q.
        t_row = _targets(beta, perm, n, offset, p32.device)
        row = _soft_ce(p_hat @ q_all.T / temperature, t_row)
        # Column-wise: local q_j against all mixed p~_i; column j of T is beta_j at i = j and
        # 1 - beta_i at every i with perm(i) = j (partners are local, so only local i count).
        t_col = torch.zeros(b, n, dtype=dtype, device=p32.device)
        bvec = bcol[:, 0]
        t_col.index_put_((rows, rows + offset), bvec, accumulate=True)
        t_col.index_put_((perm, rows + offset), 1 - bvec, accumulate=True)
        col = _soft_ce(q_hat @ p_all.T / temperature, t_col)
        return 0.5 * (row + col)


def soft_clip_loss(
    p: Tensor,
    q: Tensor,
    temperature: float = 0.125,
    *,
    detach_targets: bool = False,
    gather_distributed: bool = True,
) -> Tensor:
    """SoftCLIP (M3CoL's late phase): soft targets ``softmax(q^ q^T / tau)`` for ``p^ q^T / tau``.

    ``L = 1/2 [ mean_i CE_soft(p^_i q^^T / tau, softmax(q^_i q^^T / tau))
              + mean_j CE_soft(q^_j p^^T / tau, softmax(q^_j q^^T / tau)) ]``

    Args:
        p: ``[B, d]`` features (raw; normalised here).
        q: ``[B, d]`` features defining the soft targets (raw; normalised here).
        temperature: τ (0.125).
        detach_targets: Stop the gradient through the soft targets (the authors' code keeps it).
        gather_distributed: Use all ranks' embeddings as candidates (with gradient).

    Returns:
        Scalar fp32 loss.
    """
    check_pair_inputs(p, q, ("p", "q"))
    check_positive("temperature", temperature)
    return _soft_clip(p, q, float(temperature), detach_targets, gather_distributed)


def _soft_clip(
    p: Tensor, q: Tensor, temperature: float, detach_targets: bool, gather_distributed: bool
) -> Tensor:
    """:func:`soft_clip_loss` on checked inputs."""
    with torch.autocast(device_type=p.device.type, enabled=False):
        dtype = torch.promote_types(torch.promote_types(p.dtype, q.dtype), torch.float32)
        p_hat = unit_rows(p.to(dtype), dim=-1)
        q_hat = unit_rows(q.to(dtype), dim=-1)
        if gather_distributed and is_distributed():
            p_all, q_all = gather_with_grad(p_hat), gather_with_grad(q_hat)
        else:
            p_all, q_all = p_hat, q_hat
        target = (q_hat @ q_all.T / temperature).softmax(dim=-1)
        if detach_targets:
            target = target.detach()
        l1 = _soft_ce(p_hat @ q_all.T / temperature, target)
        l2 = _soft_ce(q_hat @ p_all.T / temperature, target)
        return 0.5 * (l1 + l2)


Embeddings = Sequence[Tensor] | Mapping[str, Tensor]


def _modalities(
    a: Tensor | Embeddings, b: Tensor | None, more: tuple[Tensor, ...]
) -> tuple[list[Tensor], list[str]]:
    """The modality tensors and their argument names: ``(a, b, *more)``, or one sequence /
    mapping ``a`` of ``M >= 2`` tensors when ``b`` is not given (the tensors are checked later,
    by :func:`~contrastmix.losses._contracts.check_pair_inputs`)."""
    if b is not None or isinstance(a, Tensor):
        if b is None:
            raise ValueError("`embeddings` must hold at least 2 modalities, got 1 (pass `b`)")
        return [a, b, *more], ["a", "b", *(f"more[{i}]" for i in range(len(more)))]  # type: ignore[list-item]
    if more:
        raise ValueError("further modalities `more` need `a` and `b` as tensors")
    if isinstance(a, Mapping):
        items = list(a.values())
        names = [f"embeddings[{k!r}]" for k in a]
    elif isinstance(a, Sequence):
        items = list(a)
        names = [f"embeddings[{i}]" for i in range(len(items))]
    else:
        raise ValueError(
            f"`a` must be a torch.Tensor or a sequence / mapping of tensors, got {type(a).__name__}"
        )
    if len(items) < 2:
        raise ValueError(f"`embeddings` must hold at least 2 modalities, got {len(items)}")
    return items, names


def _pairs(num_modalities: int) -> list[tuple[int, int]]:
    if num_modalities < 2:
        raise ValueError(f"need at least 2 modalities, got {num_modalities}")
    return [(k, (k + 1) % num_modalities) for k in range(num_modalities)]


def _check_m3col_hparams(
    temperature: float, beta_param: float, mix_prob: float, soft_temperature: float
) -> None:
    check_positive("temperature", temperature)
    check_positive("beta_param", beta_param)
    check_positive("soft_temperature", soft_temperature)
    if not 0.0 <= mix_prob <= 1.0:
        raise ValueError(f"`mix_prob` must lie in [0, 1], got {mix_prob}")


def _m3col(
    zs: list[Tensor],
    names: list[str],
    temperature: float,
    beta_param: float,
    mix_prob: float,
    soft_temperature: float,
    detach_soft_targets: bool,
    gather_distributed: bool,
    mixup: bool,
    generator: torch.Generator | None,
) -> Tensor:
    """:func:`m3col_loss` on checked hyper-parameters: every modality is checked against the
    first, then the pairs ``(k, k + 1 mod M)`` are summed, each with its own draws."""
    for k in range(1, len(zs)):
        check_pair_inputs(zs[0], zs[k], (names[0], names[k]))
    total: Tensor | None = None
    for k, j in _pairs(len(zs)):
        p, q = zs[k], zs[j]
        if mixup:
            # drawn on the generator's device (a CPU generator keeps the draws off the
            # accelerator); _m3co moves them to the features'
            beta, perm = sample_m3co_mixing(p.shape[0], beta_param, mix_prob,
                                            generator=generator)
            term = _m3co(p, q, beta, perm, temperature, gather_distributed)
        else:
            term = _soft_clip(p, q, soft_temperature, detach_soft_targets, gather_distributed)
        total = term if total is None else total + term
    assert total is not None
    return total


def m3col_loss(
    a: Tensor,
    b: Tensor,
    *more: Tensor,
    temperature: float = 0.1,
    beta_param: float = 0.15,
    mix_prob: float = 0.5,
    soft_temperature: float = 0.125,
    mixup: bool = True,
    generator: torch.Generator | None = None,
    detach_soft_targets: bool = False,
    gather_distributed: bool = True,
) -> Tensor:
    """Contrastive part of M3CoL, ``L_contrast`` (Kumar, Singhal et al. 2024; docs/methods.md §6).

    The function form of :class:`M3CoLLoss` (its constructor arguments plus those of its
    :meth:`~M3CoLLoss.forward`; the same value for the same generator state). The pairs of
    modalities ``(k mixed, k + 1 mod M fixed)`` for ``k = 0..M-1`` are summed: both directions
    ``(a, b)`` and ``(b, a)`` for two modalities, a cycle for three or more. Each pair draws its
    own derangement and coefficients (:func:`sample_m3co_mixing`), in pair order.

    Args:
        a: ``[B, d]`` raw features of the first modality (``B >= 2`` for M3Co).
        b: ``[B, d]`` raw features of the second modality, row ``i`` paired with ``a[i]``.
        *more: Further ``[B, d]`` modalities (M3CoL with ``M > 2``).
        temperature: τ of M3Co (0.1).
        beta_param: Beta parameter of the coefficients (0.15).
        mix_prob: Probability that a sample is mixed (0.5).
        soft_temperature: τ of SoftCLIP (0.125).
        mixup: M3Co (True) or SoftCLIP (False): the phase, chosen by the method's schedule.
        generator: Random generator of the mixing draws (drawn on its device).
        detach_soft_targets: Stop the gradient through SoftCLIP's targets.
        gather_distributed: Use all ranks' embeddings as candidates.

    Returns:
        Scalar fp32 loss.
    """
    _check_m3col_hparams(temperature, beta_param, mix_prob, soft_temperature)
    zs, names = _modalities(a, b, more)
    return _m3col(
        zs, names, float(temperature), float(beta_param), float(mix_prob),
        float(soft_temperature), bool(detach_soft_targets), bool(gather_distributed),
        bool(mixup), generator,
    )


class M3CoLLoss(nn.Module):
    """Contrastive part of M3CoL: M3Co in every direction, then SoftCLIP (docs/methods.md §6).

    Pairs of modalities ``(k mixed, k + 1 mod M fixed)`` for ``k = 0..M-1``: both directions for
    two modalities, a cycle for three or more. Each pair draws its own derangement and
    coefficients; the pair losses are summed (as in the authors' code). :func:`m3col_loss` is
    the function form (a paired loss: ``(a, b, ...)``).

    Phase: M3Co when called with ``mixup=True``, SoftCLIP with ``mixup=False`` (the caller's
    schedule; M3CoL uses M3Co while ``epoch < int(mixup_pct * max_epochs)``, the authors' rule).

    Args:
        temperature: τ of M3Co (0.1).
        beta_param: Beta parameter of the coefficients (0.15).
        mix_prob: Probability that a sample is mixed (0.5).
        soft_temperature: τ of SoftCLIP (0.125).
        detach_soft_targets: Stop the gradient through SoftCLIP's targets.
        gather_distributed: Use all ranks' embeddings as candidates.

    Shapes:
        ``forward(a [B, d], b [B, d], *more [B, d]) -> scalar``, as :func:`m3col_loss`; a model
        that returns its modalities together may pass them as one sequence / mapping of
        ``M >= 2`` tensors ``[B, d]`` instead (``forward(embeddings)``, in its order).
    """

    def __init__(
        self,
        temperature: float = 0.1,
        beta_param: float = 0.15,
        mix_prob: float = 0.5,
        soft_temperature: float = 0.125,
        *,
        detach_soft_targets: bool = False,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        _check_m3col_hparams(temperature, beta_param, mix_prob, soft_temperature)
        self.temperature = float(temperature)
        self.beta_param = float(beta_param)
        self.mix_prob = float(mix_prob)
        self.soft_temperature = float(soft_temperature)
        self.detach_soft_targets = bool(detach_soft_targets)
        self.gather_distributed = bool(gather_distributed)

    @staticmethod
    def pairs(num_modalities: int) -> list[tuple[int, int]]:
        """``[(k, (k + 1) % M)]``: (mixed, fixed) modality indices."""
        return _pairs(num_modalities)

    def forward(
        self,
        a: Tensor | Embeddings,
        b: Tensor | None = None,
        *more: Tensor,
        mixup: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Contrastive loss ``L_contrast`` summed over the modality pairs.

        Args:
            a: ``[B, d]`` raw features of the first modality, or all ``M >= 2`` modalities as
                one sequence / mapping of ``[B, d]`` tensors (then no ``b`` / ``more``).
            b: ``[B, d]`` raw features of the second modality.
            *more: Further ``[B, d]`` modalities.
            mixup: M3Co (True) or SoftCLIP (False).
            generator: Random generator of the mixing draws (pairs drawn in order; drawn on
                its device, so a CPU generator keeps the draws off the accelerator).

        Returns:
            Scalar fp32 loss.
        """
        zs, names = _modalities(a, b, more)
        return _m3col(
            zs, names, self.temperature, self.beta_param, self.mix_prob, self.soft_temperature,
            self.detach_soft_targets, self.gather_distributed, bool(mixup), generator,
        )


def m3col_total_loss(
    fusion_logits: Tensor,
    unimodal_logits: Sequence[Tensor] | Mapping[str, Tensor],
    labels: Tensor,
    contrast: Tensor,
    contrast_weight: float = 0.1,
) -> Tensor:
    """M3CoL objective ``CE(fusion) + sum_m CE(unimodal_m) + contrast_weight * L_contrast``.

    Args:
        fusion_logits: ``[B, C]`` logits of the fusion head.
        unimodal_logits: ``[B, C]`` logits of each unimodal head.
        labels: ``[B]`` int64 class labels.
        contrast: Scalar contrastive loss (from :class:`M3CoLLoss`).
        contrast_weight: Weight of the contrastive term (0.1).

    Returns:
        Scalar fp32 loss.
    """
    return _total_terms(fusion_logits, unimodal_logits, labels, contrast, contrast_weight).loss


class M3CoLTerms(NamedTuple):
    """Terms of the M3CoL objective (fp32 scalars)."""

    loss: Tensor
    fusion_ce: Tensor
    unimodal_ce: Tensor
    contrast: Tensor


def _total_terms(
    fusion_logits: Tensor,
    unimodal_logits: Sequence[Tensor] | Mapping[str, Tensor],
    labels: Tensor,
    contrast: Tensor,
    contrast_weight: float,
) -> M3CoLTerms:
    check_tensor("fusion_logits", fusion_logits, ndim=2, floating=True)
    check_tensor("labels", labels, ndim=1)
    check_tensor("contrast", contrast, ndim=0)
    check_positive("contrast_weight", contrast_weight, allow_zero=True)
    if labels.is_floating_point():
        raise ValueError(f"`labels` must be an integer tensor, got {labels.dtype}")
    check_same_length(fusion_logits=fusion_logits, labels=labels)
    if labels.shape[0] == 0:
        raise ValueError("`fusion_logits` must hold at least one row (the batch is empty)")
    c = fusion_logits.shape[1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= c):
        raise ValueError(f"`labels` must lie in [0, {c - 1}], got [{labels.min()}, {labels.max()}]")
    heads = (
        dict(unimodal_logits)
        if isinstance(unimodal_logits, Mapping)
        else {str(i): v for i, v in enumerate(unimodal_logits)}
    )
    with torch.autocast(device_type=fusion_logits.device.type, enabled=False):
        fusion_ce = F.cross_entropy(fusion_logits.float(), labels)
        uni = fusion_ce.new_zeros(())
        for name, logits in heads.items():
            check_tensor(f"unimodal_logits[{name}]", logits, ndim=2, dim=c, floating=True)
            check_same_length(**{f"unimodal_logits[{name}]": logits, "labels": labels})
            uni = uni + F.cross_entropy(logits.float(), labels)
        loss = fusion_ce + uni + contrast_weight * contrast.float()
    return M3CoLTerms(loss, fusion_ce, uni, contrast.float())


class M3CoLObjective(nn.Module):
    """Full M3CoL training loss: classification heads plus the contrastive term (phase per call).

    ``L = CE(fusion) + sum_m CE(unimodal_m) + contrast_weight * M3CoLLoss(embeddings)``.

    Args:
        contrast: The contrastive module (default :class:`M3CoLLoss` with the paper's settings).
        contrast_weight: Weight of the contrastive term (0.1).
    """

    def __init__(self, contrast: M3CoLLoss | None = None, contrast_weight: float = 0.1) -> None:
        super().__init__()
        check_positive("contrast_weight", contrast_weight, allow_zero=True)
        self.contrast = contrast if contrast is not None else M3CoLLoss()
        self.contrast_weight = float(contrast_weight)

    def compute(
        self,
        fusion_logits: Tensor,
        unimodal_logits: Sequence[Tensor] | Mapping[str, Tensor],
        embeddings: Sequence[Tensor] | Mapping[str, Tensor],
        labels: Tensor,
        *,
        mixup: bool = True,
        generator: torch.Generator | None = None,
    ) -> M3CoLTerms:
        """All terms; arguments as :meth:`forward`."""
        contrast = self.contrast(embeddings, mixup=mixup, generator=generator)
        return _total_terms(fusion_logits, unimodal_logits, labels, contrast, self.contrast_weight)

    def forward(
        self,
        fusion_logits: Tensor,
        unimodal_logits: Sequence[Tensor] | Mapping[str, Tensor],
        embeddings: Sequence[Tensor] | Mapping[str, Tensor],
        labels: Tensor,
        *,
        mixup: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Scalar total loss.

        Args:
            fusion_logits: ``[B, C]`` fusion-head logits.
            unimodal_logits: ``[B, C]`` logits per modality head.
            embeddings: ``[B, d]`` per-modality features for the contrastive term.
            labels: ``[B]`` class labels.
            mixup: M3Co (True) or SoftCLIP (False) phase of the contrastive term.
            generator: Random generator of the mixing draws.
        """
        return self.compute(
            fusion_logits,
            unimodal_logits,
            embeddings,
            labels,
            mixup=mixup,
            generator=generator,
        ).loss
