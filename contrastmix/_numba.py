"""Shared pieces of the CPU numba kernels (MoCHi hard-set selection, bf16-screened kNN).

numba is an optional CPU accelerator (the ``cpu`` extra: ``pip install contrastmix[cpu]``).
Plain torch is the reference path and the default everywhere; the numba kernels replace it
only for CPU tensors, only when numba is importable, and only while they are enabled
(``CONTRASTMIX_NUMBA=0`` in the environment disables them at import; :data:`ENABLED`).
numba is imported lazily, inside the functions that build kernels; nothing here imports it
at import time, so the package works without it.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

__all__ = [
    "ENABLED",
    "numba_importable",
    "numba_enabled",
    "sampled_threshold_kernel",
    "prefetch_kernel",
    "run_parallel",
]

#: Whether the numba CPU kernels may be used (``CONTRASTMIX_NUMBA=0`` turns them off).
ENABLED = os.environ.get("CONTRASTMIX_NUMBA", "1") != "0"


@functools.lru_cache(maxsize=1)
def numba_importable() -> bool:
    """Whether ``import numba`` works in this process (checked once)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def numba_enabled() -> bool:
    """Whether CPU code may use the numba kernels: :data:`ENABLED` and numba importable."""
    return ENABLED and numba_importable()


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


@functools.lru_cache(maxsize=1)
def prefetch_kernel() -> Any:
    """The ``njit`` function ``prefetch_row(array2d, i)``: a software prefetch (LLVM
    ``llvm.prefetch``, read, keep in all cache levels) of every 64-byte line of row ``i``.

    Loops that visit rows in an order the hardware cannot guess (the MoCHi type-1 pairs)
    call it a few iterations ahead. Where the intrinsic does not compile (an LLVM without
    it), a no-op is returned: the result is the same, only slower.
    """
    import numba
    import numpy as np
    from llvmlite import binding as llvm
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    # opaque pointers (LLVM >= 15) name the intrinsic by address space only
    name = "llvm.prefetch.p0" if llvm.llvm_version_info[0] >= 15 else "llvm.prefetch.p0i8"

    @intrinsic
    def prefetch_line(typingctx, arr, i, j):  # type: ignore[no-untyped-def]
        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            idx = [context.cast(builder, v, t, types.intp)
                   for v, t in zip(args[1:], signature.args[1:], strict=True)]
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, idx, wraparound=False)
            i8p = ir.PointerType(ir.IntType(8))
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), name
            )
            # rw = 0 (read), locality = 3 (keep), cache type = 1 (data)
            builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0),
                              ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return types.void(arr, i, j), codegen

    global _prefetch_line
    _prefetch_line = prefetch_line
    prefetch_row = numba.njit(cache=True)(_prefetch_row_py)
    try:
        prefetch_row(np.zeros((2, 20), np.float32), 1)
    except Exception:  # pragma: no cover - an LLVM without the intrinsic
        return numba.njit(cache=True)(_no_prefetch_py)
    return prefetch_row


# The intrinsic, set by prefetch_kernel(). A module global, not a closure variable: numba keys
# its disk cache on a function's closure, and an intrinsic there changes key in every process.
_prefetch_line: Any = None


def _prefetch_row_py(a, i):  # type: ignore[no-untyped-def]
    step = max(1, 64 // a.itemsize)
    for j in range(0, a.shape[1], step):
        _prefetch_line(a, i, j)


def _no_prefetch_py(a, i):  # type: ignore[no-untyped-def]
    pass


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
