"""InfoNCE with target 0 from its parts, without the concatenated logits matrix.

InfoNCE (van den Oord et al., "Representation Learning with Contrastive Predictive Coding",
2018) as MoCo uses it (He et al., CVPR 2020; docs/methods.md §1 "Base"): the mean cross-entropy,
target 0, of ``[pos | real]`` with ``pos`` ``[B, 1]`` and ``real`` ``[B, K]`` logits (already
divided by τ), optionally with MoCHi's synthetic logits appended (Kalantidis et al.,
NeurIPS 2020; :class:`~contrastmix.mixing.mochi.MochiCoefficients`).

``F.cross_entropy(torch.cat([pos, real, syn], 1), 0)`` copies the ``[B, 1 + K]`` logits,
writes the ``[B, 1 + K]`` log-softmax and, in backward, its gradient and the split of it
back into the parts. :func:`fused_infonce` gives the same value and gradient with one shared
row maximum, ``exp(real - max)`` kept from the forward pass and reused as the gradient of
``real`` (scaled in backward), and the synthetic part's share scatter-added into it (no
zero-filled gather gradient). Rows of ``real`` may hold ``-inf`` (masked entries: zero
probability, zero gradient); a query with no synthetic negative has ``-inf`` synthetic logits.
Once differentiable: a double backward raises.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from contrastmix.mixing.mochi import (
    MochiCoefficients,
    scatter_synthetic,
    synthetic_logits_from,
)

__all__ = ["fused_infonce", "row_max", "proxy_accuracy"]


def row_max(real: Tensor) -> Tensor:
    """``[B]`` detached row maximum of ``[B, K]`` logits (``-inf`` when ``K = 0``)."""
    if real.shape[1] == 0:
        return real.new_full((real.shape[0],), float("-inf"))
    return real.detach().amax(dim=1)


def proxy_accuracy(pos: Tensor, real_max: Tensor) -> Tensor:
    """The MoCo proxy task (docs/methods.md §1): share of queries whose positive logit ``[B, 1]``
    beats every real negative (``real_max`` ``[B]``, ``-inf`` for an empty queue: every key
    wins). A detached scalar tensor."""
    with torch.no_grad():
        return (pos.detach().squeeze(1) > real_max).float().mean()


class _FusedInfoNCE(torch.autograd.Function):
    """See :func:`fused_infonce`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        pos: Tensor,
        real: Tensor,
        q_dot_qbar: Tensor | None,
        real_max: Tensor,
        coef: MochiCoefficients | None,
    ) -> Tensor:
        with torch.no_grad():
            m = torch.maximum(pos, real_max.unsqueeze(1))
            syn = None
            if coef is not None:  # q_dot_qbar comes with it (fused_infonce checks)
                syn = (coef.syn if coef.syn is not None
                       else synthetic_logits_from(coef, real, q_dot_qbar, use_picked=True))
                if syn.shape[1]:
                    m = torch.maximum(m, syn.amax(dim=1, keepdim=True))
            e_real = torch.sub(real, m).exp_()
            e_pos = torch.exp(pos - m)
            total = e_pos + e_real.sum(dim=1, keepdim=True)
            if syn is not None:
                e_syn = torch.exp(syn - m)
                total = total + e_syn.sum(dim=1, keepdim=True)
            loss = (m + total.log() - pos).mean()
        if coef is None:
            ctx.save_for_backward(e_real, e_pos, total)
            ctx.num_mix = None
        else:
            ctx.save_for_backward(e_real, e_pos, total, e_syn, coef.positions, coef.weights,
                                  coef.c_q)
            ctx.num_mix = coef.num_mix
        return loss

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors  # type: ignore[attr-defined]
        e_real, e_pos, total = saved[:3]
        b = e_real.shape[0]
        scale = (grad / b) / total  # d loss / d logit = (softmax - onehot) / B
        g_pos = e_pos * scale - grad / b
        g_real = e_real * scale
        s = ctx.num_mix  # type: ignore[attr-defined]
        if s is None:
            return g_pos, g_real, None, None, None
        e_syn, positions, weights, c_q = saved[3:]
        p_syn = e_syn * scale
        g_qq = scatter_synthetic(g_real, positions, weights, c_q, p_syn, s)
        return g_pos, g_real, g_qq, None, None


def fused_infonce(
    pos: Tensor,
    real: Tensor,
    real_max: Tensor | None = None,
    *,
    coef: MochiCoefficients | None = None,
    q_dot_qbar: Tensor | None = None,
) -> Tensor:
    """Mean cross-entropy, target 0, of ``[pos | real | synthetic]`` logits.

    Args:
        pos: ``[B, 1]`` positive logits (with gradient).
        real: ``[B, K]`` real negative logits (with gradient; ``-inf`` = masked).
        real_max: ``[B]`` detached row maximum of ``real`` when the caller has it
            (:func:`row_max` otherwise).
        coef: MoCHi coefficients: the synthetic logits are
            ``synthetic_logits_from(coef, real, q_dot_qbar)``; None for plain InfoNCE.
        q_dot_qbar: ``[B, 1]`` ``q·q̄`` with gradient (type-2 synthetic logits), with ``coef``.

    Returns:
        Scalar loss, equal in value and gradient to ``F.cross_entropy`` of the concatenated
        logits with target 0.
    """
    if pos.ndim != 2 or pos.shape[0] == 0:
        raise ValueError(f"`pos` must be [B, 1] with B >= 1, got shape {tuple(pos.shape)}")
    if real_max is None:
        real_max = row_max(real)
    if (coef is None) != (q_dot_qbar is None):
        raise ValueError("`coef` and `q_dot_qbar` must be given together (or neither)")
    return _FusedInfoNCE.apply(pos, real, q_dot_qbar, real_max, coef)
