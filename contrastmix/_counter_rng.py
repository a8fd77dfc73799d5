"""Counter-based uniform random numbers (SplitMix64), the same in torch and in numba kernels.

Value ``c`` (0-based) of the stream with 64-bit seed ``S`` is the ``c+1``-th output of
SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA
2014) started at ``S``: ``z = mix64(S + (c + 1)·γ)``, ``γ = 0x9E3779B97F4A7C15``, and the
uniform is the top 24 bits of ``z`` times ``2⁻²⁴`` (a float32 in ``[0, 1 − 2⁻²⁴]``, the same
grid as ``torch.rand``). Any value can be computed on its own, so a parallel kernel draws
its own numbers in place, in any order, with a result that does not depend on the number of
threads; :func:`counter_uniform` gives the same values with torch ops on any device (the
reference path, used on GPUs and wherever numba is not installed). numba is only imported by
:func:`counter_uniform_kernel`, on demand. The seed is one draw from a ``torch.Generator``
(:func:`draw_seed`), so ``torch.manual_seed`` / a user's generator make runs reproducible.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

__all__ = ["GAMMA", "counter_uniform", "counter_uniform_kernel", "draw_seed"]

GAMMA = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_M64 = (1 << 64) - 1


def _signed(x: int) -> int:
    """The int64 with the same 64 bits as the unsigned ``x``."""
    return x - (1 << 64) if x >= 1 << 63 else x


def draw_seed(generator: torch.Generator | None, device: torch.device) -> Tensor:
    """One 63-bit seed (int64 scalar tensor on ``device``) from ``generator`` (or torch's
    default generator of ``device``).

    No host synchronisation: the draw runs on the generator's device; a CPU generator's seed
    goes to an accelerator by an asynchronous copy (a blocking one would wait for the queued
    kernels).
    """
    gen_device = generator.device if generator is not None else device
    seed = torch.empty((), dtype=torch.int64, device=gen_device).random_(generator=generator)
    return seed.to(device, non_blocking=True)


def counter_uniform(seed: Tensor, rows: int, width: int) -> Tensor:
    """``[rows, width]`` float32 uniforms: entry ``(r, t)`` is stream value ``r·width + t``.

    Args:
        seed: int64 scalar tensor (:func:`draw_seed`); the result is on its device.
        rows: Number of rows.
        width: Values per row.

    Returns:
        ``[rows, width]`` float32 in ``[0, 1)``.
    """
    c = torch.arange(1, rows * width + 1, dtype=torch.int64, device=seed.device)
    # int64 arithmetic wraps modulo 2^64; ">>" is arithmetic, so mask to a logical shift
    z = seed + c * _signed(GAMMA)
    z = (z ^ ((z >> 30) & ((1 << 34) - 1))) * _signed(_MIX1)
    z = (z ^ ((z >> 27) & ((1 << 37) - 1))) * _signed(_MIX2)
    z = z ^ ((z >> 31) & ((1 << 33) - 1))
    return ((z >> 40) & 0xFFFFFF).to(torch.float32).mul_(2.0**-24).view(rows, width)


def reference_uniform(seed: int, index: int) -> float:
    """Stream value ``index`` with plain Python integers (the definition, for tests)."""
    z = (seed + (index + 1) * GAMMA) & _M64
    z = ((z ^ (z >> 30)) * _MIX1) & _M64
    z = ((z ^ (z >> 27)) * _MIX2) & _M64
    z ^= z >> 31
    return (z >> 40) * 2.0**-24


@functools.lru_cache(maxsize=1)
def counter_uniform_kernel() -> Any:
    """The ``njit`` function ``uniform(seed: uint64, index: int) -> float32`` (stream value
    ``index``, as :func:`counter_uniform`)."""
    import numba
    import numpy as np

    gamma, mix1, mix2 = np.uint64(GAMMA), np.uint64(_MIX1), np.uint64(_MIX2)

    @numba.njit(cache=True)
    def uniform(seed, index):  # type: ignore[no-untyped-def]
        z = seed + np.uint64(index + 1) * gamma
        z = (z ^ (z >> np.uint64(30))) * mix1
        z = (z ^ (z >> np.uint64(27))) * mix2
        z = z ^ (z >> np.uint64(31))
        return np.float32(z >> np.uint64(40)) * np.float32(2.0**-24)

    return uniform
