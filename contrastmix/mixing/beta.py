"""The toolkit's one Beta sampler (mixup coefficients and every other ``Beta`` draw).

``torch.distributions.Beta`` takes no ``torch.Generator``; every mixing draw of the toolkit
(mixup / CutMix / C-Mixup ``lambda``, m2-mix's ``lam``, M3Co's ``beta_i``, SupReMix's hard
negative weights) comes from :func:`sample_beta` instead, so that a seeded generator reproduces
it exactly, on the CPU or on an accelerator.

Method: ``X / (X + Y)`` with ``X ~ Gamma(alpha)``, ``Y ~ Gamma(beta)``, evaluated as
``sigmoid(log X - log Y)`` in float64. Gamma draws come from PyTorch's Gamma kernel
(``torch._standard_gamma``, the sampler behind ``torch.distributions.Gamma``; Marsaglia & Tsang,
2000) with the generator passed through. For a concentration ``k < 1`` the kernel is asked for
``Gamma(k + 1)`` and the boost ``G(k) = G(k + 1) * U^(1/k)`` is applied in log space, so that
very small concentrations (e.g. 0.15, or 0.01) do not underflow to ``0`` (which would turn a
draw near 0 or 1 into ``0/0``). The draw is one or two kernels on the generator's device and
never waits for the device (no host synchronisation), so it may run inside a training step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from contrastmix._validation import check_positive

__all__ = ["sample_beta", "sample_lambda"]

_TINY = 1e-300  # smallest uniform used inside a log (torch.rand may return exactly 0)


def _check_concentration(name: str, value: float) -> float:
    # finiteness first: a NaN or infinite concentration must never reach the Gamma kernel
    # (its rejection loop never accepts a draw)
    if not math.isfinite(float(value)):
        raise ValueError(f"`{name}` must be finite, got {float(value)}")
    check_positive(name, value)
    return float(value)


def _log_gamma(
    shape: tuple[int, ...], k: float, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """``log`` of ``Gamma(k, 1)`` draws in float64 (see the module docstring)."""
    boost = k < 1.0
    conc = torch.full(shape, k + 1.0 if boost else k, dtype=torch.float64, device=device)
    log_g = torch.log(torch._standard_gamma(conc, generator=generator))
    if boost:
        u = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
        log_g = log_g + torch.log(u.clamp_min(_TINY)) / k
    return log_g


def sample_beta(
    shape: tuple[int, ...] | int,
    alpha: float,
    beta: float | None = None,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw ``Beta(alpha, beta)`` samples reproducibly from a ``torch.Generator``.

    Draw order (for exact reproduction): the ``Gamma(alpha)`` part, then the ``Gamma(beta)``
    part, each one ``Gamma`` kernel call (plus one uniform draw when its concentration is
    below 1), for the whole ``shape`` at once.

    Args:
        shape: Output shape, or ``n`` for ``[n]`` (``()`` gives a 0-d tensor).
        alpha: First concentration (> 0, finite).
        beta: Second concentration (> 0, finite); ``None`` for the symmetric
            ``Beta(alpha, alpha)`` of mixup.
        generator: Optional generator; the draws run on its device (with none: on ``device``,
            else the CPU) so a CPU generator keeps them off the accelerator.
        device: Device of the returned tensor (default: where the draws ran).
        dtype: Output dtype (computed in float64, then cast).

    Returns:
        Tensor of ``shape`` with values in ``[0, 1]``.

    Raises:
        ValueError: on a non-positive or non-finite concentration or a negative size.
    """
    a = _check_concentration("alpha", alpha)
    b = a if beta is None else _check_concentration("beta", beta)
    shp = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
    if any(s < 0 for s in shp):
        raise ValueError(f"`shape` must be non-negative, got {shp}")
    if generator is not None:
        draw_device = generator.device
    else:
        draw_device = torch.device(device) if device is not None else torch.device("cpu")
    log_x = _log_gamma(shp, a, generator, draw_device)
    log_y = _log_gamma(shp, b, generator, draw_device)
    out = torch.sigmoid(log_x - log_y).to(dtype)
    return out if device is None else out.to(device, non_blocking=True)


def sample_lambda(
    n: int,
    alpha: float = 2.0,
    *,
    per_sample: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Mixup coefficients ``lambda ~ Beta(alpha, alpha)`` for a batch (:func:`sample_beta`).

    Args:
        n: Batch size (>= 0).
        alpha: Beta concentration (C-Mixup uses 2).
        per_sample: One lambda per sample (``[n]``) instead of one per batch (``[n]`` filled
            with a single draw).
        generator: Optional generator.
        device: Output device.

    Returns:
        ``[n]`` float32 coefficients (the weight of the *first* sample of each pair).
    """
    if n < 0:
        raise ValueError(f"`n` must be >= 0, got {n}")
    if per_sample:
        return sample_beta(n, alpha, generator=generator, device=device)
    return sample_beta(1, alpha, generator=generator, device=device).expand(n).clone()
