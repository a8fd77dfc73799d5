"""MoCHi: hard negative mixing in the embedding space of a MoCo queue.

Kalantidis, Sariyildiz, Pion, Weinzaepfel & Larlus, "Hard Negative Mixing for Contrastive
Learning", NeurIPS 2020. See docs/methods.md §1.

For every query ``q`` (never shared across the batch):

1. ``H_q``: the ``N`` queue entries with the highest ``q·n`` (top-N of the logits that MoCo
   computes anyway); entries whose sample id equals the query's are excluded first.
2. Type 1 (``s`` points): ``h = normalize(α n_i + (1−α) n_j)``, ``n_i, n_j`` drawn independently
   with replacement from ``H_q``, ``α ~ U(0, 1)``.
3. Type 2 (``s'`` points): ``h' = normalize(β q̄ + (1−β) n_j)``, ``n_j`` from ``H_q``,
   ``β ~ U(0, 0.5)``, ``q̄ = q.detach()``.

Two equivalent implementations share the same random draws (:func:`mochi_draws`):
:func:`mochi_negatives` materialises the ``[B, s+s', d]`` synthetic vectors (clear, used in
tests); :func:`mochi_logits` returns the synthetic logits ``q·h`` algebraically from the
already computed similarities ``l = q·n``:
``q·h = (α l_i + (1−α) l_j) / ‖α n_i + (1−α) n_j‖`` and
``q·h' = (β q·q̄ + (1−β) l_j) / ‖β q̄ + (1−β) n_j‖`` with
``‖β q̄ + (1−β) n_j‖² = β²‖q̄‖² + (1−β)²‖n_j‖² + 2β(1−β) l_j`` (detached).
The numerator carries the gradient (through ``l``) and the norm is a constant, so
``∂(q·h)/∂q = h`` exactly as with materialised, detached ``h``. Only the ``B·s`` type-1 norms
``‖α n_i + (1−α) n_j‖`` need the ``d``-dimensional vectors; no ``B × s × d`` tensor is kept.
Plain torch ops are the reference path and the default (``topk``, chunked gathers,
``scatter_add_``); they run on any device and never synchronise with it. On the CPU, when the
optional numba accelerator is installed (``pip install contrastmix[cpu]``; disabled by
``CONTRASTMIX_NUMBA=0`` or :data:`USE_NUMBA` ``= False``), three numba kernels do the same
work on float32 tensors (:mod:`contrastmix.mixing._mochi_kernels`): the hard-set selection
with the draws; the coefficients with the synthetic logits' values, one pass over the pairs
that prefetches the rows a few pairs ahead; and, in backward, the scatter of the synthetic
logits' gradient. Both paths draw the same counter-based random numbers
(:mod:`contrastmix._counter_rng`), so they give the same negatives up to float rounding.

Value checks of the inputs (NaN, unit norm) follow :mod:`contrastmix._validation`: on CPU
tensors by default, skipped on accelerators unless debug checks are on.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from contrastmix._counter_rng import counter_uniform, draw_seed
from contrastmix._numba import ENABLED as _NUMBA_ENABLED
from contrastmix._numba import run_parallel
from contrastmix._validation import (
    check_positive,
    check_same_length,
    check_sample_ids,
    check_tensor,
    check_unit_norm,
    same_instance_mask,
)

__all__ = ["MochiDraws", "mochi_draws", "mochi_negatives", "mochi_logits"]

# Queries per chunk of the pair products, so that the gathered rows stay small (cache-sized).
_PAIR_CHUNK_ROWS = 1 << 15


class MochiDraws(NamedTuple):
    """Random draws of one MoCHi step (all detached, on the queue's device).

    Attributes:
        pos_i: ``[B, s]`` queue rows of ``n_i`` (type 1).
        pos_j: ``[B, s]`` queue rows of ``n_j`` (type 1).
        alpha: ``[B, s]`` weights of ``n_i``, ``U(0, 1)``.
        pos_k: ``[B, s']`` queue rows mixed with the query (type 2).
        beta: ``[B, s']`` weights of the query, ``U(0, 0.5)``.
        valid: ``[B]`` bool, False for a query with no eligible queue entry (every entry
            shares its sample id): it gets no synthetic negatives.
        positions: ``[B, 2s + s']`` = ``[pos_i | pos_j | pos_k]`` (the others are views of it).
        excluded: Whether sample ids were used (otherwise ``valid`` is all True).
        top: ``[B]`` the largest eligible similarity of each query (``-inf`` if none).
        picked: ``[B, 2s + s']`` the similarities at ``positions`` (detached).
        counts: ``[B]`` the size of each query's hard set (``min(N, eligible entries)``).
        mix_w: ``[B, s + s']`` ``[α | β / 0.5]`` as the CPU kernel wrote them (``alpha`` and
            ``beta`` come from it), or None from the torch path.
    """

    pos_i: Tensor
    pos_j: Tensor
    alpha: Tensor
    pos_k: Tensor
    beta: Tensor
    valid: Tensor
    positions: Tensor
    excluded: bool
    top: Tensor
    picked: Tensor
    counts: Tensor
    mix_w: Tensor | None = None


def _check_hparams(num_hard: int, num_mix: int, num_query_mix: int) -> None:
    for name, value in (("num_hard", num_hard), ("num_mix", num_mix),
                        ("num_query_mix", num_query_mix)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"`{name}` must be an int, got {type(value).__name__}")
    check_positive("num_hard", num_hard)
    check_positive("num_mix", num_mix, allow_zero=True)
    check_positive("num_query_mix", num_query_mix, allow_zero=True)


def _check_inputs(query: Tensor, queue: Tensor) -> None:
    check_tensor("query", query, ndim=2, floating=True)
    check_tensor("queue", queue, ndim=2, dim=query.shape[1], floating=True)
    check_unit_norm("query", query)
    check_unit_norm("queue", queue)
    if queue.shape[0] == 0:
        raise ValueError("`queue` is empty: MoCHi needs at least one queue entry to mix")


def mochi_draws(
    sims: Tensor,
    num_hard: int,
    num_mix: int,
    num_query_mix: int,
    *,
    queue_ids: Tensor | None = None,
    query_ids: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> MochiDraws:
    """Select each query's hard set and draw the MoCHi mixing indices and weights.

    The hard set is the top-``N`` of ``sims`` (``N`` clamped to the queue size), ordered by
    decreasing similarity, so a draw addresses a *rank* in the hard set: permuting the queue
    rows permutes the returned positions and nothing else. Entries with
    ``queue_ids == query_ids[b]`` are excluded from query ``b``'s hard set (the draws then
    range over its eligible entries only). The random numbers: one 63-bit seed drawn from
    ``generator`` (torch's default generator when None) keys a counter-based uniform stream
    (SplitMix64, :mod:`contrastmix._counter_rng`); values ``b·(3s + 2s') + t`` give query
    ``b`` its ``[u_i | u_j | u_k | α | β/0.5]``, and a rank is ``floor(u · |H_q|)``. Any
    value can be computed on its own, so the CPU kernel draws in place, in parallel, with a
    result independent of the thread count; the torch path computes the same stream.

    Args:
        sims: ``[B, K]`` similarities ``q·n`` (used without gradient).
        num_hard: ``N`` > 0.
        num_mix: ``s`` >= 0 (``s > N`` is fine: draws are with replacement).
        num_query_mix: ``s'`` >= 0.
        queue_ids: Optional ``[K]`` sample ids of the queue entries.
        query_ids: Optional ``[B]`` sample ids of the queries.
        generator: Optional ``torch.Generator`` for every random draw.

    Returns:
        :class:`MochiDraws`.
    """
    _check_hparams(num_hard, num_mix, num_query_mix)
    check_tensor("sims", sims, ndim=2, floating=True, finite=False)
    b, k = sims.shape
    if k == 0:
        raise ValueError("`sims` has no queue column: MoCHi needs at least one queue entry")
    check_sample_ids(queue_ids, query_ids, k, b)
    return _select_and_draw(
        sims, num_hard, num_mix, num_query_mix, queue_ids=queue_ids, query_ids=query_ids,
        generator=generator,
    )


def _select_and_draw(
    sims: Tensor,
    num_hard: int,
    num_mix: int,
    num_query_mix: int,
    *,
    queue_ids: Tensor | None,
    query_ids: Tensor | None,
    generator: torch.Generator | None,
    masked: bool = False,
) -> MochiDraws:
    """:func:`mochi_draws` on checked inputs.

    ``masked``: ``sims`` already holds ``-inf`` at every queue row of the query's own sample
    (the caller masked its logits with the ids), so no second mask is built.

    On the CPU (float32, numba) one kernel, parallel over queries, selects each query's hard
    set, draws its numbers in place (:mod:`contrastmix._counter_rng`) and maps them to queue
    rows; otherwise ``torch.topk`` + ``gather`` on :func:`counter_uniform` draws. Both give
    the same positions and weights (up to the order of exactly equal similarities, which the
    kernel breaks by queue row).
    """
    b, k = sims.shape
    dev = sims.device
    n_eff = min(num_hard, k)
    s_det = sims.detach().to(torch.promote_types(sims.dtype, torch.float32))
    excluded = queue_ids is not None and query_ids is not None
    s = num_mix
    n_idx = 2 * s + num_query_mix
    # per query [u_i (s) | u_j (s) | u_k (s') | alpha (s) | beta / 0.5 (s')]
    width = n_idx + s + num_query_mix
    seed = draw_seed(generator, dev)
    kern = _cpu_kernels(s_det) if s_det.dtype == torch.float32 else None
    if kern is not None:
        select_kernel = kern.select
        use_ids = excluded and not masked
        pos = torch.empty(b, n_idx, dtype=torch.long)
        counts = torch.empty(b, dtype=torch.long)
        mix_w = torch.empty(b, s + num_query_mix, dtype=torch.float32)
        top = torch.empty(b, dtype=torch.float32)
        picked = torch.empty(b, n_idx, dtype=torch.float32)
        ids = [torch.zeros(1, dtype=torch.long) if t is None or not use_ids
               else t.to(device="cpu", dtype=torch.long).contiguous()
               for t in (queue_ids, query_ids)]
        run_parallel(
            select_kernel, s_det.contiguous().numpy(), np.uint64(int(seed)), n_eff, s,
            num_query_mix, ids[0].numpy(), ids[1].numpy(), use_ids, pos.numpy(),
            picked.numpy(), counts.numpy(), mix_w.numpy(), top.numpy(),
        )
        alpha, beta = mix_w[:, :s], 0.5 * mix_w[:, s:]
    else:
        mix_w = None
        if excluded and not masked:
            s_det = s_det.masked_fill(
                same_instance_mask(queue_ids, query_ids, k, b, dev), float("-inf"))
        u = counter_uniform(seed, b, width)
        vals, hard = torch.topk(s_det, n_eff, dim=1, largest=True, sorted=True)
        top = vals[:, 0]
        counts = torch.isfinite(vals).sum(dim=1)  # eligible entries come first (sorted)
        cnt = counts.clamp_min(1).unsqueeze(1)
        # rank floor(u * count) in [0, count); the clamp only guards fp rounding at u -> 1
        ranks = torch.minimum((u[:, :n_idx] * cnt).long(), cnt - 1)
        pos = hard.gather(1, ranks)
        picked = s_det.gather(1, pos)
        alpha, beta = u[:, n_idx : n_idx + s], 0.5 * u[:, n_idx + s :]
    return MochiDraws(
        pos_i=pos[:, :s],
        pos_j=pos[:, s : 2 * s],
        alpha=alpha,
        pos_k=pos[:, 2 * s :],
        beta=beta,
        valid=counts > 0,
        positions=pos,
        excluded=excluded,
        top=top,
        picked=picked,
        counts=counts,
        mix_w=mix_w,
    )


def mochi_negatives(
    query: Tensor,
    queue: Tensor,
    num_hard: int,
    num_mix: int,
    num_query_mix: int,
    *,
    queue_ids: Tensor | None = None,
    query_ids: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Materialised MoCHi synthetic negatives (reference implementation).

    Args:
        query: ``[B, d]`` L2-normalised queries.
        queue: ``[K, d]`` L2-normalised queue entries (``K >= 1``; ``N`` is clamped to ``K``).
        num_hard: ``N``, size of each query's hard set.
        num_mix: ``s``, type-1 negatives (mixtures of two hard negatives) per query.
        num_query_mix: ``s'``, type-2 negatives (query mixed into a hard negative) per query.
        queue_ids: Optional ``[K]`` sample ids of the queue entries.
        query_ids: Optional ``[B]`` sample ids of the queries; queue entries with the same id
            are excluded from that query's hard set.
        generator: Optional ``torch.Generator`` (same draws as :func:`mochi_logits`).

    Returns:
        ``[B, s + s', d]`` detached, unit-norm synthetic negatives in fp32, type 1 first then
        type 2. A query without any eligible queue entry gets zero vectors.

    Raises:
        ValueError: bad shapes, NaN, non-normalised inputs, empty queue, bad ``N``/``s``/``s'``.
    """
    _check_hparams(num_hard, num_mix, num_query_mix)
    _check_inputs(query, queue)
    dtype = torch.promote_types(query.dtype, torch.float32)
    with torch.no_grad(), torch.autocast(device_type=query.device.type, enabled=False):
        q = query.detach().to(dtype)
        n = queue.detach().to(dtype)
        draws = mochi_draws(
            q @ n.T, num_hard, num_mix, num_query_mix,
            queue_ids=queue_ids, query_ids=query_ids, generator=generator,
        )
        a = draws.alpha.to(dtype).unsqueeze(-1)
        h1 = a * n[draws.pos_i] + (1 - a) * n[draws.pos_j]
        bt = draws.beta.to(dtype).unsqueeze(-1)
        h2 = bt * q.unsqueeze(1) + (1 - bt) * n[draws.pos_k]
        h = F.normalize(torch.cat([h1, h2], dim=1), dim=-1)
        return h * draws.valid.view(-1, 1, 1).to(dtype)


def _numba_kernels() -> Any:
    """The CPU kernels (:mod:`contrastmix.mixing._mochi_kernels`), compiled on first use;
    None when numba is not installed (the torch path is used then).

    Returns:
        The compiled parallel kernels (:class:`~contrastmix.mixing._mochi_kernels.Kernels`).
    """
    global _NUMBA_KERNEL
    if _NUMBA_KERNEL is None:
        try:
            from contrastmix.mixing._mochi_kernels import build

            _NUMBA_KERNEL = build()  # imports numba
        except ImportError:  # numba is the optional `cpu` extra
            _NUMBA_KERNEL = False
            return None
    return _NUMBA_KERNEL or None


_NUMBA_KERNEL: Any = None
#: Use the numba CPU kernels when numba is installed (``CONTRASTMIX_NUMBA=0`` sets it False at
#: import; tests toggle it). The torch path runs otherwise, and always off the CPU.
USE_NUMBA = _NUMBA_ENABLED


def _cpu_kernels(t: Tensor) -> Any:
    """The numba kernels when ``t`` is a float32/float64 CPU tensor, :data:`USE_NUMBA` is on
    and numba is installed; else None (the torch reference path)."""
    if not (USE_NUMBA and t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)):
        return None
    return _numba_kernels()


def _pair_norms(queue: Tensor, pos_i: Tensor, pos_j: Tensor, w_i: Tensor, w_j: Tensor
                ) -> Tensor:
    """``[B, s]`` norms ``‖w_i n_{pos_i} + w_j n_{pos_j}‖`` (no ``B × s × d`` tensor kept).

    On the CPU a fused numba loop (one pass over the two rows of each pair) when numba is
    installed; otherwise (and on GPUs) chunked ``index_select`` + weighted sum + norm.
    """
    b, s = pos_i.shape
    out = queue.new_empty(b, s)
    if b * s == 0:
        return out
    kern = _cpu_kernels(queue)
    if kern is not None:
        run_parallel(
            kern.pair_norms, queue.contiguous().numpy(), pos_i.numpy(), pos_j.numpy(),
            w_i.to(queue.dtype).numpy(), w_j.to(queue.dtype).numpy(), out.numpy(),
        )
        return out
    flat = out.view(-1)
    fi, fj = pos_i.reshape(-1), pos_j.reshape(-1)
    wi, wj = w_i.to(queue.dtype).reshape(-1, 1), w_j.to(queue.dtype).reshape(-1, 1)
    for lo in range(0, fi.numel(), _PAIR_CHUNK_ROWS):
        hi = min(fi.numel(), lo + _PAIR_CHUNK_ROWS)
        v = wi[lo:hi] * queue.index_select(0, fi[lo:hi])
        v.add_(wj[lo:hi] * queue.index_select(0, fj[lo:hi]))
        flat[lo:hi] = torch.linalg.vector_norm(v, dim=1)
    return out


def mochi_logits(
    query: Tensor,
    queue: Tensor,
    sims: Tensor,
    num_hard: int,
    num_mix: int,
    num_query_mix: int,
    *,
    queue_ids: Tensor | None = None,
    query_ids: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fast path: synthetic logits ``[q·h, q·h']`` without materialising ``h``.

    Uses exactly the draws of :func:`mochi_negatives` for the same generator state, and gives
    the same values and the same gradient w.r.t. ``query`` (through ``sims``); no gradient
    reaches the queue.

    Args:
        query: ``[B, d]`` L2-normalised queries (gradient flows only through ``sims`` and the
            type-2 term ``q·q̄``).
        queue: ``[K, d]`` L2-normalised queue entries (detached here).
        sims: ``[B, K]`` ``query @ queue.T`` as already computed for the MoCo logits (with
            gradient, not divided by τ).
        num_hard: ``N``.
        num_mix: ``s``.
        num_query_mix: ``s'``.
        queue_ids: Optional ``[K]`` sample ids of the queue entries.
        query_ids: Optional ``[B]`` sample ids of the queries.
        generator: Optional ``torch.Generator``.

    Returns:
        ``[B, s + s']`` fp32 (or wider) logits before the temperature, type 1 first. A query
        without any eligible queue entry gets ``-inf`` (no synthetic negative; finite
        gradients in a softmax).
    """
    _check_hparams(num_hard, num_mix, num_query_mix)
    _check_inputs(query, queue)
    check_tensor("sims", sims, ndim=2, floating=True)
    check_sample_ids(queue_ids, query_ids, queue.shape[0], query.shape[0])
    check_same_length(query=query, sims=sims)
    if sims.shape[1] != queue.shape[0]:
        raise ValueError(
            f"`sims` must be [B, K] = [{query.shape[0]}, {queue.shape[0]}], "
            f"got shape {tuple(sims.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(query.dtype, sims.dtype), torch.float32)
    with torch.autocast(device_type=query.device.type, enabled=False):
        q, l = query.to(dtype), sims.to(dtype)
        coef = _mochi_coefficients(
            q, queue.detach().to(dtype), l, num_hard, num_mix, num_query_mix,
            queue_ids=queue_ids, query_ids=query_ids, generator=generator,
        )
        return synthetic_logits_from(coef, l, (q * q.detach()).sum(dim=1, keepdim=True))


class MochiCoefficients(NamedTuple):
    """The constant part of the fast path: ``q·h = W l[positions]`` (+ ``c_q q·q̄`` for type 2).

    Attributes:
        positions: ``[B, 2s + s']`` queue rows ``[pos_i | pos_j | pos_k]``.
        weights: ``[B, 2s + s']`` coefficients ``[α/‖·‖ | (1−α)/‖·‖ | (1−β)/‖·‖]``.
        c_q: ``[B, s']`` coefficients of ``q·q̄`` in the type-2 logits ``β/‖·‖``.
        valid: ``[B]`` False for queries without an eligible queue entry (their synthetic
            logits are ``-inf``).
        num_mix: ``s``.
        top: ``[B]`` the largest eligible entry of ``l`` per query (:class:`MochiDraws`).
        picked: ``[B, 2s + s']`` ``l`` at ``positions`` (detached).
        syn: ``[B, s + s']`` the synthetic logits' values (detached; ``-inf`` for invalid
            queries) when the CPU kernel computed them with the coefficients, else None.
    """

    positions: Tensor
    weights: Tensor
    c_q: Tensor
    valid: Tensor
    num_mix: int
    top: Tensor
    picked: Tensor
    syn: Tensor | None = None


def _mochi_coefficients(
    q: Tensor,
    n: Tensor,
    l: Tensor,
    num_hard: int,
    num_mix: int,
    num_query_mix: int,
    *,
    queue_ids: Tensor | None,
    query_ids: Tensor | None,
    generator: torch.Generator | None,
    logit_scale: float = 1.0,
    masked: bool = False,
    queue_sq: Tensor | None = None,
) -> MochiCoefficients:
    """Draws and constant coefficients of the fast path (validated inputs, one dtype).

    ``l`` may be scaled similarities ``logit_scale · q·n`` (e.g. logits ``q·n / τ``): the
    hard set is the same, and the coefficients then give scaled synthetic logits
    ``W l[positions] + c_q (q·q̄)`` (``c_q`` carries the scale). ``masked``: see
    :func:`_select_and_draw`. ``queue_sq``: the ``[K]`` squared row norms of ``n`` when the
    caller has them (computed otherwise). Sample ids are checked by the caller.
    """
    draws = _select_and_draw(
        l, num_hard, num_mix, num_query_mix,
        queue_ids=queue_ids, query_ids=query_ids, generator=generator, masked=masked,
    )
    with torch.no_grad():
        qbar = q.detach()
        qq = (qbar * qbar).sum(dim=1, keepdim=True)
        if queue_sq is None:
            queue_sq = torch.linalg.vector_norm(n, dim=1).square()
    kern = _cpu_kernels(n) if n.dtype == torch.float32 else None
    if kern is not None and draws.mix_w is not None:
        # one kernel: weights, c_q and the synthetic logits' values (same maths as below)
        with torch.no_grad():
            b = l.shape[0]
            weights = torch.empty(b, 2 * num_mix + num_query_mix)
            c_q = torch.empty(b, num_query_mix)
            syn = torch.empty(b, num_mix + num_query_mix)
            run_parallel(
                kern.coefficients, n.detach().contiguous().numpy(),
                queue_sq.contiguous().numpy(), draws.positions.numpy(), draws.picked.numpy(),
                draws.mix_w.numpy(), draws.counts.numpy(), qq.view(-1).numpy(),
                np.float32(logit_scale), num_mix, weights.numpy(), c_q.numpy(), syn.numpy(),
            )
        return MochiCoefficients(draws.positions, weights, c_q, draws.valid, num_mix,
                                 draws.top, draws.picked, syn)
    with torch.no_grad():
        a = draws.alpha.to(n.dtype)
        norm1 = _pair_norms(n, draws.pos_i, draws.pos_j, a, 1 - a).clamp_min(1e-12)
        bt = draws.beta.to(n.dtype)
        sq_k = queue_sq[draws.pos_k]
        qn = draws.picked[:, 2 * num_mix :].to(n.dtype) / logit_scale
        norm2 = (bt * bt * qq + (1 - bt) ** 2 * sq_k
                 + 2 * bt * (1 - bt) * qn).clamp_min(0).sqrt().clamp_min(1e-12)
        # constant coefficients: q·h = c_i l_i + c_j l_j, q·h' = c_q (q·q̄) + c_k l_k
        weights = torch.cat([a / norm1, (1 - a) / norm1, (1 - bt) / norm2], dim=1)
        c_q = bt / norm2 * logit_scale
    return MochiCoefficients(draws.positions, weights, c_q, draws.valid, num_mix, draws.top,
                             draws.picked.to(n.dtype))


def synthetic_logits_from(coef: MochiCoefficients, l: Tensor, q_dot_qbar: Tensor, *,
                          use_picked: bool = False) -> Tensor:
    """``[B, s + s']`` synthetic logits from the coefficients (differentiable in ``l`` and
    ``q_dot_qbar`` = ``[B, 1]`` ``q·q̄``); ``-inf`` for queries without eligible entries.
    ``use_picked``: take ``l[positions]`` from ``coef.picked`` (no gather; no gradient
    through ``l``)."""
    s = coef.num_mix
    # one gather (one scatter in backward) carries the grad
    g = coef.picked if use_picked else l.gather(1, coef.positions)
    w = coef.weights * g
    syn1 = w[:, :s] + w[:, s : 2 * s]
    syn2 = coef.c_q * q_dot_qbar + w[:, 2 * s :]
    out = torch.cat([syn1, syn2], dim=1)
    # unconditionally: testing `valid.all()` first would read a device value back (a sync)
    return out.masked_fill(~coef.valid.unsqueeze(1), float("-inf"))


def scatter_synthetic(g_real: Tensor, positions: Tensor, weights: Tensor, c_q: Tensor,
                      p_syn: Tensor, num_mix: int) -> Tensor:
    """Backward of the synthetic logits ``q·h = W l[positions] + c_q (q·q̄)``, in place.

    Args:
        g_real: ``[B, K]`` gradient of ``l``; receives ``W * p`` at ``positions`` (type 1's
            ``p`` twice: columns ``t`` and ``s + t``).
        positions: ``[B, 2s + s']`` (:class:`MochiCoefficients`).
        weights: ``[B, 2s + s']``.
        c_q: ``[B, s']``.
        p_syn: ``[B, s + s']`` gradient of the synthetic logits.
        num_mix: ``s``.

    Returns:
        ``[B, 1]`` gradient of ``q·q̄``. On the CPU (float32, numba) one kernel, parallel
        over rows; otherwise ``Tensor.scatter_add_`` of the weighted gradients.
    """
    s = num_mix
    kern = (_cpu_kernels(g_real) if g_real.dtype == torch.float32 and g_real.is_contiguous()
            and p_syn.dtype == torch.float32 else None)
    if kern is None:
        src = torch.cat([p_syn[:, :s], p_syn[:, :s], p_syn[:, s:]], dim=1).mul_(weights)
        g_real.scatter_add_(1, positions, src)
        return (p_syn[:, s:] * c_q).sum(dim=1, keepdim=True)
    g_qq = g_real.new_empty(g_real.shape[0], 1)
    run_parallel(kern.scatter_synthetic, g_real.numpy(), positions.contiguous().numpy(),
                 weights.to(g_real.dtype).contiguous().numpy(),
                 c_q.to(g_real.dtype).contiguous().numpy(), p_syn.contiguous().numpy(), s,
                 g_qq.numpy())
    return g_qq
