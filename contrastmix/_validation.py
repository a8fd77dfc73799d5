"""Input checks shared by every loss, mixer, bank and metric.

Every public function of contrastmix validates its tensors with these helpers so that bad
input fails early with a :class:`ValueError` that names the offending argument, instead of a
shape error deep inside a matmul or, worse, a silently wrong number.

Two kinds of checks:

* **Structural checks** (type, number of dimensions, sizes, dtype, matching lengths) read only
  metadata: they are free and always run.
* **Value checks** (:func:`check_finite`: no NaN/inf; :func:`check_unit_norm`: rows of unit L2
  norm) read the tensor's values back to the host. On an accelerator that is a host
  synchronisation (the CPU waits for the queued kernels), which would stall every training
  step, so the rule is:

  - by default value checks run for **CPU tensors** and are **skipped for tensors on any other
    device** (CUDA, MPS, ...);
  - ``CONTRASTMIX_DEBUG_CHECKS=1`` in the environment (read at import) or
    :func:`set_debug_checks` ``(True)`` runs them on every device (debugging a NaN on a GPU);
  - ``CONTRASTMIX_DEBUG_CHECKS=0`` or ``set_debug_checks(False)`` skips them everywhere, CPU
    included (e.g. to time the CPU path without them); ``set_debug_checks(None)`` restores the
    default.

  :func:`value_checks` says whether they run for a given tensor. Structural errors raise
  ``ValueError`` in every mode; NaN / non-unit inputs raise ``ValueError`` whenever value
  checks run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "NonFiniteError",
    "set_debug_checks",
    "debug_checks",
    "value_checks",
    "check_tensor",
    "check_finite",
    "check_same_length",
    "check_unit_norm",
    "unit_norm_atol",
    "UNIT_NORM_ATOL",
    "UNIT_NORM_ATOL_LOW_PRECISION",
    "check_positive",
    "check_features",
    "check_sample_ids",
    "same_instance_mask",
]


def _debug_from_env() -> bool | None:
    value = os.environ.get("CONTRASTMIX_DEBUG_CHECKS", "").strip().lower()
    if value in ("", "auto", "default"):
        return None
    return value not in ("0", "false", "no", "off")


# None: the default (value checks on CPU tensors only); True: everywhere; False: nowhere.
_DEBUG_CHECKS: bool | None = _debug_from_env()


def set_debug_checks(on: bool | None) -> None:
    """Choose when value checks (NaN/inf, unit norm) run; see the module docstring.

    Args:
        on: ``True``: on every device (each check synchronises with an accelerator);
            ``False``: never; ``None``: the default, CPU tensors only.
    """
    global _DEBUG_CHECKS
    if on is not None and not isinstance(on, bool):
        raise ValueError(f"`on` must be True, False or None, got {on!r}")
    _DEBUG_CHECKS = on


def debug_checks() -> bool | None:
    """The current setting of :func:`set_debug_checks` (``None``: the default rule)."""
    return _DEBUG_CHECKS


def value_checks(x: Tensor) -> bool:
    """Whether value checks run for ``x``: the :func:`set_debug_checks` setting when one is
    made, else whether ``x`` is on the CPU (reading it back there is no synchronisation)."""
    if _DEBUG_CHECKS is not None:
        return _DEBUG_CHECKS
    return x.device.type == "cpu"


def check_tensor(
    name: str,
    x: object,
    *,
    ndim: int | Sequence[int] | None = None,
    dim: int | None = None,
    finite: bool = True,
    floating: bool = False,
) -> Tensor:
    """Validate a tensor argument and return it.

    Args:
        name: Argument name used in the error message.
        x: The value to check.
        ndim: Required number of dimensions (an int or a set of allowed ints).
        dim: Required size of the last dimension.
        finite: Reject NaN / inf entries.
        floating: Require a floating-point dtype.

    The finiteness check is a value check (:func:`value_checks`); the others always run.

    Returns:
        ``x`` unchanged.

    Raises:
        ValueError: naming ``name`` and the problem.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(f"{a}-D" for a in allowed)
            raise ValueError(f"`{name}` must be {want}, got shape {tuple(x.shape)}")
    if dim is not None and (x.ndim == 0 or x.shape[-1] != dim):
        raise ValueError(
            f"`{name}` must have last dimension {dim}, got shape {tuple(x.shape)}"
        )
    if floating and not x.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got {x.dtype}")
    if finite:
        check_finite(name, x)
    return x


class NonFiniteError(ValueError):
    """A tensor holds NaN or inf (raised by :func:`check_finite`; a ``ValueError``)."""


def check_finite(name: str, x: Tensor) -> Tensor:
    """Raise :class:`NonFiniteError` if ``x`` holds NaN or inf (e.g. diverged embeddings).

    A value check: skipped where :func:`value_checks` is False (by default, off the CPU).
    """
    if (x.is_floating_point() or x.is_complex()) and value_checks(x):
        # One reduction first (cheap); the element-wise check only runs when it is not finite.
        if x.numel() and not bool(torch.isfinite(x.detach().sum())) and not bool(
            torch.isfinite(x.detach()).all()
        ):
            n_bad = int((~torch.isfinite(x.detach())).sum())
            raise NonFiniteError(
                f"`{name}` contains {n_bad} non-finite value(s) (NaN or inf); "
                "check the learning rate / inputs"
            )
    return x


def check_same_length(**tensors: Tensor | None) -> int:
    """Check that all given (non-None) tensors share their first dimension; return it."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    if not items:
        raise ValueError("no tensors given")
    n0 = items[0][1].shape[0]
    for _, v in items[1:]:
        if v.shape[0] != n0:
            desc = ", ".join(f"`{kk}` has {vv.shape[0]}" for kk, vv in items)
            raise ValueError(f"length mismatch: {desc} rows")
    return int(n0)


#: Default :func:`check_unit_norm` tolerance for fp32 / fp64 rows.
UNIT_NORM_ATOL = 1e-3
#: Default tolerance for fp16 / bf16 rows: bf16 keeps 8 significant bits (eps ``2**-7``), so
#: rounding each entry of a unit vector, or normalising it in bf16, moves its norm by up to a
#: few ``1e-3`` (measured ~3.5e-3 in bf16-mixed training); ``2e-2`` is ~2.5 bf16 eps and still
#: rejects rows that were never normalised.
UNIT_NORM_ATOL_LOW_PRECISION = 2e-2


def unit_norm_atol(dtype: torch.dtype) -> float:
    """The default :func:`check_unit_norm` tolerance for rows stored in ``dtype``:
    :data:`UNIT_NORM_ATOL` (1e-3) for 32-bit and wider floats, :data:`UNIT_NORM_ATOL_LOW_PRECISION`
    (2e-2) for narrower ones (fp16, bf16, fp8)."""
    if dtype.is_floating_point and torch.finfo(dtype).bits < 32:
        return UNIT_NORM_ATOL_LOW_PRECISION
    return UNIT_NORM_ATOL


def check_unit_norm(name: str, x: Tensor, *, atol: float | None = None) -> Tensor | None:
    """Raise ``ValueError`` unless every row of ``x`` has unit L2 norm (within ``atol``).

    A value check: skipped where :func:`value_checks` is False (by default, off the CPU);
    then nothing is computed. The norms are computed in fp32 or wider whatever ``x.dtype``.

    Args:
        name: Argument name used in the error message.
        x: ``[..., d]`` rows to check.
        atol: Allowed ``| ||x|| - 1 |``; ``None`` (default) picks one that fits ``x.dtype``
            (:func:`unit_norm_atol`: 1e-3 for fp32 / fp64, 2e-2 for fp16 / bf16, whose
            rounding alone moves a unit row's norm by a few 1e-3). Check low-precision rows
            *before* upcasting them: an fp32 copy of bf16 rows carries the bf16 error but gets
            the fp32 tolerance.

    Returns:
        The row norms (detached, fp32 or wider), for callers that need them too; ``None``
        when the check was skipped.
    """
    if not value_checks(x):
        return None
    if atol is None:
        atol = unit_norm_atol(x.dtype)
    norms = x.detach().to(torch.promote_types(x.dtype, torch.float32)).norm(dim=-1)
    if x.numel() == 0:
        return norms
    worst = float((norms - 1).abs().max())
    if worst > atol:
        raise ValueError(
            f"`{name}` must be L2-normalised along the last dimension "
            f"(max | ||x|| - 1 | = {worst:.3g}, allowed {atol:.3g} for {x.dtype}); "
            "call torch.nn.functional.normalize first"
        )
    return norms


def check_sample_ids(
    queue_ids: Tensor | None, query_ids: Tensor | None, n_queue: int, n_query: int
) -> bool:
    """Validate optional per-row sample ids of a queue (``[K]``) and of queries (``[B]``).

    Returns:
        Whether ids were given. Raises ``ValueError`` when only one is given or a length is
        wrong.
    """
    if queue_ids is None and query_ids is None:
        return False
    if queue_ids is None or query_ids is None:
        raise ValueError("`queue_ids` and `query_ids` must be given together (or neither)")
    for name, t, n in (("queue_ids", queue_ids, n_queue), ("query_ids", query_ids, n_query)):
        check_tensor(name, t, ndim=1)
        if t.shape[0] != n:
            raise ValueError(f"`{name}` must have {n} entries, got shape {tuple(t.shape)}")
    return True


def same_instance_mask(queue_ids: Tensor | None, query_ids: Tensor | None, n_queue: int,
                       n_query: int, device: torch.device) -> Tensor | None:
    """``[B, K]`` bool, True where queue row ``j`` holds the query ``b``'s own sample.

    Returns ``None`` when no ids are given. Both or neither must be given, as 1-D tensors of
    ``K`` and ``B`` entries (:func:`check_sample_ids`). Re-exported by
    :mod:`contrastmix.losses.moco`.
    """
    if not check_sample_ids(queue_ids, query_ids, n_queue, n_query):
        return None
    assert queue_ids is not None and query_ids is not None
    # host-to-accelerator copies are asynchronous (a blocking one waits for the device)
    nb = torch.device(device).type != "cpu"
    return (query_ids.to(device, non_blocking=nb).unsqueeze(1)
            == queue_ids.to(device, non_blocking=nb).unsqueeze(0))


def check_positive(name: str, value: float | int, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` if ``value`` is not > 0 (or >= 0 when ``allow_zero``)."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        rel = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be {rel}, got {value}")


def check_features(name: str, x: object, *, dim: int | None = None) -> Tensor:
    """Validate a 2-D floating feature matrix ``[N, d]`` (finite; last dimension ``dim``)."""
    return check_tensor(name, x, ndim=2, dim=dim, floating=True)
