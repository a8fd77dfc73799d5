"""SupReMix: supervised contrastive regression with mixed hard negatives and hard positives.

Wu et al., "Mixup Your Own Pairs" (SupReMix), 2023. See docs/methods.md §2, whose clean formula this
module implements (not the authors' code, which normalises real and mixture logits with two
different max-shifts, mis-aligns mixture labels and builds a dense ``(2B)^3 x d`` tensor).

``features [B, V, d]`` (unit norm) are flattened view-major into ``N = V * B`` anchors ``z``,
each carrying its sample's label ``y``. For anchor ``i`` the candidates ``c`` are

* real views ``c != i``; positives ``P_i = {c != i : y_c = y_i}``;
* hard negatives (anchor-inclusive mixtures), one per view ``k`` with ``y_k != y_i``:
  ``m = a z_i + (1 - a) z_k``, ``a ~ Beta(2, 8)``, label ``a y_i + (1 - a) y_k``;
* hard positives (anchor-exclusive mixtures), one per ordered pair ``(j, k)`` with
  ``y_j < y_i < y_k``, ``y_i - y_j < eps``, ``y_k - y_i < eps``:
  ``m = a z_j + (1 - a) z_k``, ``a = (y_k - y_i) / (y_k - y_j)`` (so its label is exactly
  ``y_i``); these form ``M+_i`` and count as positives.

Mixtures are constants (detached) and not re-normalised. Every denominator term is weighted by
``w_ic = 1 + |y_i - y_c|`` (mixture label for mixtures; numerators unweighted), and one shared
log-sum-exp normalises real and mixture candidates:

    L_i = -1/|P_i u M+_i| sum_{p in P_i u M+_i} [ z_i.p/tau - log sum_{c != i} w_ic exp(z_i.c/tau) ]

``L`` is the mean over anchors with at least one positive (anchors with none, e.g. ``B = 1``
with ``V = 1``, are excluded; with none left the loss is ``0`` with a zero gradient connected to
``features``). With all three switches off this is :func:`~contrastmix.losses.supcon.supcon_loss`
exactly; degenerate batches (one sample, all labels equal, no bracketing pair) simply have no
mixtures and reduce to (weighted) SupCon.

Implementation (no mixture is ever materialised). With ``Gd = z @ z.detach().T`` (gradient to
the anchor side only), a mixture's logit is ``z_i.m/tau = (a Gd[i, j] + (1 - a) Gd[i, k])/tau``,
whose gradient w.r.t. ``z_i`` is ``m/tau`` with ``m`` constant, exactly as with materialised,
detached mixtures. Hard negatives need ``[N, N]`` tensors. Hard positives are ``O(N^3)`` scalars;
they are processed for chunks of anchors in sorted-label order (only labels inside the window
are touched; on an accelerator fixed chunks with masks, :data:`HOST_CHUNKS`, so that no chunk
bound is read back to the host), in ``O(chunk_elements)`` memory, and enter the loss through two
per-anchor quantities: their log-sum-exp (an autograd function whose ``N x N`` Jacobian w.r.t.
``Gd`` is accumulated in the same pass) and the linear sum of their logits
(``sum_j Gd[i, j] C[i, j]``). Peak memory is ``O(N^2 + N d + chunk_elements)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from contrastmix._validation import check_positive, check_tensor, value_checks
from contrastmix.losses._contracts import flatten_views
from contrastmix.losses.supcon import _NEG
from contrastmix.mixing.beta import sample_beta

__all__ = ["supremix_loss", "SupReMixLoss", "hard_positive_pairs"]


# --------------------------------------------------------------------------------------------
# Hard positives.
# --------------------------------------------------------------------------------------------
def hard_positive_pairs(labels: Tensor, window: float = math.inf) -> tuple[Tensor, ...]:
    """List every hard-positive mixture explicitly (``O(N^3)`` memory: tests and analysis).

    Args:
        labels: ``[N]`` labels of the flattened views.
        window: eps in label units (> 0); ``inf`` = every bracketing pair.

    Returns:
        ``(anchor, lower, upper, a)``: four ``[M]`` tensors, one entry per mixture
        ``a * z[lower] + (1 - a) * z[upper]`` of anchor ``anchor`` (``a`` in float64), with
        ``y[lower] < y[anchor] < y[upper]`` and mixed label ``y[anchor]``.
    """
    check_tensor("labels", labels, ndim=1)
    check_positive("window", window)
    y = labels.to(torch.float64)
    dl = y[:, None, None] - y[None, :, None]  # y_i - y_j
    du = y[None, None, :] - y[:, None, None]  # y_k - y_i
    mask = (dl > 0) & (dl < window) & (du > 0) & (du < window)
    i, j, k = mask.nonzero(as_tuple=True)
    a = (y[k] - y[i]) / (y[k] - y[j])
    return i, j, k, a


#: Hard-positive chunks of CPU tensors follow the sorted labels (only the labels inside each
#: anchor's window are touched; the chunk bounds are read on the host, free on the CPU). On an
#: accelerator, or with this set to False, chunks are fixed blocks of anchors with every view a
#: masked candidate: ``O(N^3)`` work instead of ``O(sum of window sizes)``, but no host
#: synchronisation. Both give the same statistics (up to summation order).
HOST_CHUNKS = True


def _hard_positive_stats(
    gd: Tensor, y: Tensor, window: float, temperature: float, chunk_elements: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-anchor hard-positive statistics, chunked over anchors (see :data:`HOST_CHUNKS`).

    Args:
        gd: ``[N, N]`` detached Gram matrix ``z @ z.T`` (compute dtype).
        y: ``[N]`` float64 labels.
        window: eps.
        temperature: tau.
        chunk_elements: Budget for ``C * R_lower * R_upper`` per chunk.

    Returns:
        ``lse [N]`` (``log sum_(j,k) exp(t_ijk)``, ``-inf`` without pairs), ``jac [N, N]``
        (``d lse_i / d gd[i, :]``), ``coef [N, N]`` (``sum_(j,k) t_ijk = (gd * coef).sum(1)/tau``)
        and ``count [N]`` (number of pairs), where ``t_ijk = (a gd_ij + (1 - a) gd_ik)/tau``.
    """
    n = y.shape[0]
    dev, dt = gd.device, gd.dtype
    out = (torch.full((n,), -math.inf, dtype=dt, device=dev),
           torch.zeros(n, n, dtype=dt, device=dev), torch.zeros(n, n, dtype=dt, device=dev),
           torch.zeros(n, dtype=torch.long, device=dev))
    if not (HOST_CHUNKS and dev.type == "cpu"):
        every = torch.arange(n, device=dev)
        c = max(1, chunk_elements // max(1, n * n))
        for r in range(0, n, c):
            _chunk_stats(gd, y, every[r : r + c], every, every, window, temperature, out)
        return out
    order = torch.argsort(y, stable=True)
    ys = y[order]
    # Sorted index ranges: lower candidates of sorted anchor r are [lo_r, eq_lo_r) (labels in
    # (y_r - eps, y_r)); upper candidates are [eq_hi_r, hi_r) (labels in (y_r, y_r + eps)).
    lo = torch.searchsorted(ys, ys - window, side="right").tolist()
    eq_lo = torch.searchsorted(ys, ys, side="left").tolist()
    eq_hi = torch.searchsorted(ys, ys, side="right").tolist()
    hi = torch.searchsorted(ys, ys + window, side="left").tolist()
    has_pairs = [(eq_lo[r] > lo[r]) and (hi[r] > eq_hi[r]) for r in range(n)]
    r = 0
    while r < n:
        if not has_pairs[r]:
            r += 1
            continue
        r1 = r + 1
        # Grow the chunk while its [C, R_lower, R_upper] block stays within budget.
        while r1 < n and has_pairs[r1]:
            c = r1 + 1 - r
            size = c * (eq_lo[r1] - lo[r]) * (hi[r1] - eq_hi[r])
            if size > chunk_elements:
                break
            r1 += 1
        _chunk_stats(gd, y, order[r:r1], order[lo[r] : eq_lo[r1 - 1]],
                     order[eq_hi[r] : hi[r1 - 1]], window, temperature, out)
        r = r1
    return out


def _chunk_stats(gd: Tensor, y: Tensor, anchors: Tensor, low: Tensor, up: Tensor,
                 window: float, temperature: float,
                 out: tuple[Tensor, Tensor, Tensor, Tensor]) -> None:
    """Add the hard-positive statistics of ``anchors [C]`` with lower candidates ``low [Rl]``
    and upper candidates ``up [Ru]`` (views outside an anchor's window are masked) to
    ``out = (lse, jac, coef, count)`` of :func:`_hard_positive_stats`."""
    lse, jac, coef, count = out
    dt = gd.dtype
    yi = y[anchors]
    dl = yi[:, None] - y[low][None, :]  # [C, Rl]  y_i - y_j
    du = y[up][None, :] - yi[:, None]  # [C, Ru]  y_k - y_i
    ml = (dl > 0) & (dl < window)
    mu = (du > 0) & (du < window)
    mlf, muf = ml.to(dt), mu.to(dt)
    # a = (y_k - y_i) / (y_k - y_j) on valid pairs; invalid entries get a finite dummy a
    # and a -inf logit through the additive row / column masks below.
    dl_s = torch.where(ml, dl, 1.0).to(dt)
    du_s = torch.where(mu, du, 1.0).to(dt)
    a = (dl_s[:, :, None] + du_s[:, None, :]).reciprocal_().mul_(du_s[:, None, :])
    g_rows = gd.index_select(0, anchors)
    gl = g_rows.index_select(1, low) / temperature  # [C, Rl]
    gu = g_rows.index_select(1, up) / temperature  # [C, Ru]
    # t = a gl + (1 - a) gu = gu + a (gl - gu), -inf outside the window.
    base = gu.masked_fill(~mu, -math.inf)[:, None, :]
    t = torch.addcmul(base, a, gl[:, :, None] - gu[:, None, :])
    t.add_(torch.where(ml, 0.0, -math.inf).to(dt)[:, :, None])
    m = t.flatten(1).amax(dim=1)
    m = torch.where(torch.isfinite(m), m, 0.0)
    e = t.sub_(m[:, None, None]).exp_()  # unnormalised pair weights, 0 outside
    del t
    s_e = e.flatten(1).sum(dim=1)
    lse_c = m + torch.log(s_e)
    # anchors without a pair (dense chunks only): no weight, lse stays -inf
    inv = torch.where(s_e > 0, 1.0 / s_e, 0.0)[:, None]
    # With p = e / s_e: d lse / d gd_ij = sum_k p a / tau (j lower),
    # d lse / d gd_ik = sum_j p (1 - a) / tau (k upper).
    e_sum_j = e.sum(dim=1)
    ea = e.mul_(a)
    del e
    jl = ea.sum(dim=2) * inv / temperature
    ju = (e_sum_j - ea.sum(dim=1)) * inv / temperature
    del ea
    # Linear part: sum over pairs of t = sum_j gd_ij C_ij with C = sum_k a (lower) and
    # sum_j (1 - a) (upper), restricted to valid pairs.
    cl = torch.bmm(a, muf[:, :, None])[:, :, 0] * mlf
    cu = (mlf.sum(dim=1, keepdim=True) - torch.bmm(mlf[:, None, :], a)[:, 0, :]) * muf
    rows_l = anchors[:, None].expand_as(jl)
    rows_u = anchors[:, None].expand_as(ju)
    cols_l = low[None, :].expand_as(jl)
    cols_u = up[None, :].expand_as(ju)
    jac.index_put_((rows_l, cols_l), jl, accumulate=True)
    jac.index_put_((rows_u, cols_u), ju, accumulate=True)
    coef.index_put_((rows_l, cols_l), cl, accumulate=True)
    coef.index_put_((rows_u, cols_u), cu, accumulate=True)
    lse[anchors] = lse_c
    count[anchors] = ml.sum(dim=1) * mu.sum(dim=1)


class _LinearisedLogSumExp(torch.autograd.Function):
    """``value`` in the forward pass; ``grad_g = grad[:, None] * jac`` in the backward pass.

    Carries the hard-positive log-sum-exp (computed chunk by chunk without autograd) back into
    the graph through its exact Jacobian w.r.t. the Gram rows, so that no ``O(N^3)``
    intermediate is kept for the backward pass. First-order only (double backward raises).
    """

    @staticmethod
    def forward(ctx: Any, g: Tensor, value: Tensor, jac: Tensor) -> Tensor:
        ctx.save_for_backward(jac)
        return value.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        (jac,) = ctx.saved_tensors
        return grad[:, None] * jac, None, None


# --------------------------------------------------------------------------------------------
# Loss.
# --------------------------------------------------------------------------------------------
def _check_hparams(
    temperature: float, window: float, negative_alpha: tuple[float, float], chunk_elements: int
) -> None:
    check_positive("temperature", temperature)
    if not (isinstance(window, (int, float)) and not math.isnan(window)):
        raise ValueError(f"`window` must be a positive number, got {window!r}")
    check_positive("window", window)
    if len(negative_alpha) != 2:
        raise ValueError(f"`negative_alpha` must be a pair (alpha, beta), got {negative_alpha!r}")
    check_positive("negative_alpha[0]", negative_alpha[0])
    check_positive("negative_alpha[1]", negative_alpha[1])
    check_positive("chunk_elements", chunk_elements)


def supremix_loss(
    features: Tensor,
    labels: Tensor,
    *,
    temperature: float = 0.5,
    window: float = math.inf,
    negative_alpha: tuple[float, float] = (2.0, 8.0),
    hard_negatives: bool = True,
    hard_positives: bool = True,
    distance_weighting: bool = True,
    generator: torch.Generator | None = None,
    negative_coefficients: Tensor | None = None,
    chunk_elements: int = 2**19,
) -> Tensor:
    """SupReMix loss (docs/methods.md §2).

    Args:
        features: ``[B, V, d]`` L2-normalised embeddings (V views per sample).
        labels: ``[B]`` real-valued targets (one per sample, shared by its views).
        temperature: tau > 0 (0.5 default; 0.3 is also common).
        window: eps in label units: hard positives only from ``j, k`` within ``eps`` of the
            anchor's label (``inf`` = all bracketing pairs; 5 for ages).
        negative_alpha: ``(alpha, beta)`` of the Beta law of the anchor weight ``a`` in hard
            negatives (mean ``alpha / (alpha + beta)`` = 0.2 by default).
        hard_negatives: Add anchor-inclusive mixtures as negatives.
        hard_positives: Add anchor-exclusive, label-preserving mixtures as positives.
        distance_weighting: Weight denominator terms by ``1 + |y_i - y_c|``.
        generator: Generator for the Beta draws
            (:func:`~contrastmix.mixing.beta.sample_beta`, run on the generator's device and
            moved to the features').
        negative_coefficients: Optional fixed ``[V*B, V*B]`` anchor weights ``a[i, k]`` for the
            hard negative of anchor ``i`` with view ``k`` (view-major order, as
            :func:`~contrastmix.losses._contracts.flatten_views`); replaces the Beta draws (tests,
            reproducing a batch under a permutation).
        chunk_elements: Memory budget (number of scalars per temporary) of one chunk of the
            hard-positive computation.

    Returns:
        Scalar loss (fp32, or fp64 for fp64 features).

    Raises:
        ValueError: ``features`` not ``[B, V, d]`` floating / non-finite / not unit norm,
            ``labels`` missing or not ``[B]`` real numbers
            (:func:`~contrastmix.losses._contracts.check_view_inputs`), or a bad
            hyper-parameter / ``negative_coefficients``.
    """
    _check_hparams(temperature, window, negative_alpha, chunk_elements)
    z, y = flatten_views(features, labels, unit_norm=True)
    assert y is not None
    n = z.shape[0]
    dev = z.device
    dtype = torch.promote_types(z.dtype, torch.float32)
    y64 = y.to(torch.float64)
    if hard_negatives and negative_coefficients is not None:
        check_tensor("negative_coefficients", negative_coefficients, ndim=2, floating=True)
        if tuple(negative_coefficients.shape) != (n, n):
            raise ValueError(
                f"`negative_coefficients` must have shape ({n}, {n}) (V*B views), "
                f"got {tuple(negative_coefficients.shape)}"
            )
        if value_checks(negative_coefficients) and bool(
            ((negative_coefficients < 0) | (negative_coefficients > 1)).any()
        ):
            raise ValueError("`negative_coefficients` must lie in [0, 1]")

    with torch.autocast(device_type=dev.type, enabled=False):
        zf = z.to(dtype)
        eye = torch.eye(n, dtype=torch.bool, device=dev)
        same = y64[:, None] == y64[None, :]
        absdiff = (y64[:, None] - y64[None, :]).abs()

        # Real candidates (gradient to both sides of the dot product).
        logits = zf @ zf.T / temperature
        logw = torch.log1p(absdiff).to(dtype) if distance_weighting else 0.0
        components = [torch.logsumexp((logits + logw).masked_fill(eye, _NEG), dim=1)]
        pos = same & ~eye
        n_pos = pos.sum(dim=1)
        pos_sum = (logits * pos).sum(dim=1)

        if hard_negatives or hard_positives:
            gd = zf @ zf.detach().T  # mixtures are constants: gradient to the anchor only

        if hard_negatives:
            if negative_coefficients is not None:
                a = negative_coefficients.to(device=dev, dtype=dtype)
            else:
                a = sample_beta(
                    (n, n), *negative_alpha, generator=generator, device=dev, dtype=dtype
                )  # with no generator: drawn on the features' device from the default stream
            hn = (a * gd.diagonal()[:, None] + (1 - a) * gd) / temperature
            if distance_weighting:
                hn = hn + torch.log1p((1 - a) * absdiff.to(dtype))
            components.append(torch.logsumexp(hn.masked_fill(same, _NEG), dim=1))

        if hard_positives:
            lse_v, jac, coef, count = _hard_positive_stats(
                gd.detach(), y64, float(window), float(temperature), int(chunk_elements)
            )
            lse_v = torch.where(count > 0, lse_v, _NEG)
            components.append(_LinearisedLogSumExp.apply(gd, lse_v, jac))
            pos_sum = pos_sum + (gd * coef).sum(dim=1) / temperature
            n_pos = n_pos + count

        lse = torch.logsumexp(torch.stack(components, dim=1), dim=1)
        per_anchor = lse - pos_sum / n_pos.clamp_min(1)
        valid = n_pos > 0
        return torch.where(valid, per_anchor, 0.0).sum() / valid.sum().clamp_min(1)


class SupReMixLoss(nn.Module):
    """Module form of :func:`supremix_loss` (Wu et al. 2023, "Mixup Your Own Pairs"); a view
    loss: ``(features, labels, *, generator=None)``.

    Args:
        temperature: tau (0.5).
        window: eps for hard positives, in label units (``inf`` = no limit).
        negative_alpha: Beta ``(alpha, beta)`` for the anchor weight of hard negatives.
        hard_negatives: Use anchor-inclusive mixtures as negatives.
        hard_positives: Use anchor-exclusive mixtures as positives.
        distance_weighting: Weight denominator terms by ``1 + |y_i - y_c|``.
        chunk_elements: Memory budget of one hard-positive chunk (scalars per temporary).

    Shapes:
        ``forward(features [B, V, d], labels [B], *, generator=None) -> scalar``. With all three
        switches off it equals :class:`~contrastmix.losses.supcon.SupConLoss` at the same
        temperature.
    """

    def __init__(
        self,
        temperature: float = 0.5,
        window: float = math.inf,
        negative_alpha: tuple[float, float] = (2.0, 8.0),
        hard_negatives: bool = True,
        hard_positives: bool = True,
        distance_weighting: bool = True,
        chunk_elements: int = 2**19,
    ) -> None:
        super().__init__()
        negative_alpha = tuple(float(v) for v in negative_alpha)  # type: ignore[assignment]
        _check_hparams(temperature, window, negative_alpha, chunk_elements)
        self.temperature = float(temperature)
        self.window = float(window)
        self.negative_alpha = negative_alpha
        self.hard_negatives = hard_negatives
        self.hard_positives = hard_positives
        self.distance_weighting = distance_weighting
        self.chunk_elements = int(chunk_elements)

    def forward(
        self,
        features: Tensor,
        labels: Tensor,
        *,
        generator: torch.Generator | None = None,
        negative_coefficients: Tensor | None = None,
    ) -> Tensor:
        return supremix_loss(
            features,
            labels,
            temperature=self.temperature,
            window=self.window,
            negative_alpha=self.negative_alpha,
            hard_negatives=self.hard_negatives,
            hard_positives=self.hard_positives,
            distance_weighting=self.distance_weighting,
            generator=generator,
            negative_coefficients=negative_coefficients,
            chunk_elements=self.chunk_elements,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, window={self.window}, "
            f"negative_alpha={self.negative_alpha}, hard_negatives={self.hard_negatives}, "
            f"hard_positives={self.hard_positives}, "
            f"distance_weighting={self.distance_weighting}"
        )
