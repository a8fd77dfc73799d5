"""Shared pieces of the CPU numba kernels (MoCHi hard-set selection, bf16-screened kNN).

numba is imported lazily (it ships with umap-learn); nothing here runs at import time.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = ["sampled_threshold_kernel", "run_parallel"]


@functools.lru_cache(maxsize=1)
def sampled_threshold_kernel() -> Any:
    """The ``njit`` function ``sampled_threshold(sample, want, step) -> float32``.

    ``sample`` holds every ``step``-th value of a row (``-inf`` entries are ignored). The
    result is the lower edge, minus one bin, of the bin of a 1024-bin histogram over the
    sample's finite range where the sample's descending count first reaches
    ``want / step`` plus a margin (``3 sqrt(want / step) + 8``); ``-inf`` when the sample
    is constant or too small. It is a guess of a value just below the row's ``want``-th
    largest: callers keep every value ``>=`` it, check they kept at least ``want``, and fall
    back to keeping everything otherwise, so their result is exact whatever the sample says.
    """
    import numba
    import numpy as np

    @numba.njit(cache=True)
    def sampled_threshold(sample, want, step):  # type: ignore[no-untyped-def]
        nb = 1024
        target = want // step + 3 * np.int64(np.sqrt(want / step)) + 8
        lo = np.float32(np.inf)
        hi = np.float32(-np.inf)
        for j in range(sample.shape[0]):
            v = sample[j]
            if v > -np.inf:
                lo = min(lo, v)
                hi = max(hi, v)
        if not hi > lo:
            return np.float32(-np.inf)
        scale = np.float32(nb) / (hi - lo)
        hist = np.zeros(nb + 1, np.int64)
        for j in range(sample.shape[0]):
            v = sample[j]
            if v > -np.inf:
                hist[min(np.int64((v - lo) * scale), nb)] += 1
        acc = 0
        cut = nb
        while cut > 0 and acc + hist[cut] < target:
            acc += hist[cut]
            cut -= 1
        if cut == 0:
            return np.float32(-np.inf)
        return lo + np.float32(cut - 1) / scale

    return sampled_threshold


def run_parallel(fn: Any, *args: Any) -> None:
    """Run a parallel numba kernel with torch's thread count, then restore torch's count.

    numba's OpenMP layer shares the OpenMP runtime with torch and resets its thread count on
    launch.
    """
    import numba

    torch_threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        fn(*args)
    finally:
        torch.set_num_threads(torch_threads)
