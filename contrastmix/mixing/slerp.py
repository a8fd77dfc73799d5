"""Spherical linear interpolation (slerp) between unit vectors.

Used by geodesic multimodal mixup (m2-mix): Oh et al., "Geodesic Multi-Modal Mixup for Robust
Fine-Tuning", NeurIPS 2023. See docs/methods.md §5 ("slerp convention").

Convention (pinned by the tests)::

    m_lam(a, b) = a * sin(lam * theta) / sin(theta) + b * sin((1 - lam) * theta) / sin(theta),
    theta = arccos(a . b)

``lam`` weights the **first** argument: ``m_1(a, b) = a``, ``m_0(a, b) = b`` and the angle between
the result and ``a`` is ``(1 - lam) * theta``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastmix._validation import check_tensor, check_unit_norm, value_checks

__all__ = ["slerp", "slerp_unit", "ANTIPODAL_TOL"]

#: ``a . b < -1 + ANTIPODAL_TOL`` (angle within ~1.4e-3 rad of pi) is treated as antipodal:
#: the great circle through ``a`` and ``b`` is undefined there, so :func:`slerp` raises.
ANTIPODAL_TOL = 1e-6

_CLAMP = 1e-7


def _lam_tensor(lam: float | Tensor, n: int, a: Tensor, dtype: torch.dtype) -> Tensor:
    """Return ``lam`` as a ``[n, 1]`` (or ``[]`` for 1-D inputs) tensor in ``dtype``."""
    if isinstance(lam, Tensor):
        check_tensor("lam", lam, ndim=(0, 1))
        if lam.ndim == 1:
            if a.ndim == 1:
                raise ValueError(
                    f"`lam` must be a scalar for 1-D `a`, got shape {tuple(lam.shape)}"
                )
            if lam.shape[0] != n:
                raise ValueError(
                    f"`lam` must have one value per row ({n}), got shape {tuple(lam.shape)}"
                )
        # a value check (off on accelerators by default): reading lam would synchronise
        lo, hi = ((float(lam.detach().min()), float(lam.detach().max()))
                  if value_checks(lam) and lam.numel() else (0.0, 1.0))
        t = lam.to(device=a.device, dtype=dtype, non_blocking=True)
    else:
        if not isinstance(lam, (int, float)):
            raise ValueError(f"`lam` must be a float or a tensor, got {type(lam).__name__}")
        lo = hi = float(lam)
        t = torch.tensor(float(lam), device=a.device, dtype=dtype)
    if not (lo >= 0.0 and hi <= 1.0):
        raise ValueError(f"`lam` must lie in [0, 1], got values in [{lo}, {hi}]")
    if t.ndim == 1:
        t = t.unsqueeze(-1)
    return t


def slerp(a: Tensor, b: Tensor, lam: float | Tensor, *, eps: float = 1e-6) -> Tensor:
    """Spherical interpolation ``m_lam(a, b)`` on the unit sphere (docs/methods.md §5).

    Computed in fp32 or wider (also under ``torch.autocast``): fp16/bf16 inputs are upcast and
    the result is returned in ``promote_types(dtype, float32)``. The inputs are re-normalised
    after the upcast (they must already be unit norm, see below) so that round-off of low
    precision inputs cannot push ``a . b`` outside ``[-1, 1]``.

    ``a . b`` is clamped to ``[-1 + 1e-7, 1 - 1e-7]`` (finite gradient of ``arccos``); where
    ``sin(theta) < eps`` the result falls back to normalised linear interpolation
    ``normalize(lam a + (1 - lam) b)``. Identical inputs return ``a`` (to ~1e-7) with no NaN in
    the value or the gradient. Note that after the clamp ``sin(theta) >= ~4.5e-4``, so with the
    default ``eps`` the fallback is a safety net; the clamped formula is already within
    ``O(theta^2)`` of linear interpolation for near-identical inputs.

    Args:
        a: ``[B, d]`` or ``[d]`` L2-normalised vectors (weighted by ``lam``).
        b: Same shape as ``a``, L2-normalised (weighted by ``1 - lam``).
        lam: Interpolation weight of ``a`` in ``[0, 1]``: a float, a 0-d tensor or a ``[B]``
            tensor (one weight per row).
        eps: Threshold on ``sin(theta)`` below which linear interpolation is used.

    Returns:
        ``[B, d]`` (or ``[d]``) unit vectors, the angle to ``a`` being ``(1 - lam) * theta``.

    Raises:
        ValueError: on mismatched shapes, non-unit-norm inputs (unnormalised embeddings are an
            error, not silently normalised: call ``F.normalize`` first), NaN/inf, ``lam`` outside
            ``[0, 1]``, or antipodal rows (``a . b < -1 + 1e-6``, where slerp is undefined); the
            message names the offending rows. The NaN, unit-norm, ``lam`` range and antipodal
            checks are value checks (by default skipped for accelerator tensors,
            :func:`contrastmix._validation.value_checks`).
    """
    check_tensor("a", a, ndim=(1, 2), floating=True)
    check_tensor("b", b, ndim=(1, 2), floating=True)
    if a.shape != b.shape:
        raise ValueError(
            f"`a` and `b` must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    check_unit_norm("a", a)  # tolerance of the input dtype (2e-2 for fp16 / bf16)
    check_unit_norm("b", b)
    return slerp_unit(a, b, lam, eps=eps)


def slerp_unit(a: Tensor, b: Tensor, lam: float | Tensor, *, eps: float = 1e-6) -> Tensor:
    """:func:`slerp` for callers that already checked ``a`` and ``b`` (same shape, unit rows,
    finite) at their own precision, e.g. fp32 copies of bf16 rows checked before the upcast
    (which carry bf16 rounding that the fp32 unit-norm tolerance would reject). Re-normalises
    in fp32 or wider as :func:`slerp` does; ``lam`` and antipodal rows are still checked
    (value checks: skipped where :func:`contrastmix._validation.value_checks` is False).

    Args:
        a: ``[B, d]`` or ``[d]`` unit vectors (weighted by ``lam``).
        b: Same shape as ``a`` (weighted by ``1 - lam``).
        lam: Weight of ``a`` in ``[0, 1]``: a float, a 0-d tensor or a ``[B]`` tensor.
        eps: Threshold on ``sin(theta)`` below which linear interpolation is used.

    Returns:
        ``[B, d]`` (or ``[d]``) unit vectors in ``promote_types(dtype, float32)``.
    """
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    n = a.shape[0] if a.ndim == 2 else 1
    with torch.autocast(device_type=a.device.type, enabled=False):
        a32 = F.normalize(a.to(dtype), dim=-1)
        b32 = F.normalize(b.to(dtype), dim=-1)
        t = _lam_tensor(lam, n, a32, dtype)
        dot = (a32 * b32).sum(dim=-1, keepdim=True)
        bad = dot.detach() < -1.0 + ANTIPODAL_TOL
        # a value check (off on accelerators by default: there an antipodal row is not
        # rejected and gets the finite result of the clamped formula, on an arbitrary circle)
        if value_checks(dot) and bool(bad.any()):
            rows = torch.nonzero(bad.reshape(-1)).reshape(-1)[:10].tolist()
            raise ValueError(
                f"`a` and `b` are antipodal (a.b ~ -1) at row(s) {rows}: slerp between opposite "
                "points is undefined (no unique great circle)"
            )
        cos = dot.clamp(-1.0 + _CLAMP, 1.0 - _CLAMP)
        theta = torch.acos(cos)
        sin = torch.sin(theta)
        small = sin < eps
        safe_sin = torch.where(small, torch.ones_like(sin), sin)
        w_a = torch.sin(t * theta) / safe_sin
        w_b = torch.sin((1 - t) * theta) / safe_sin
        out = w_a * a32 + w_b * b32
        # branchless (no host read of `small`): rows with sin(theta) >= eps keep `out`
        lin = F.normalize(t * a32 + (1 - t) * b32, dim=-1)
        return torch.where(small, lin, out)
