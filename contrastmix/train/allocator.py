"""Keep freed heap memory in the process between training steps (glibc ``malloc``).

A training step frees and allocates the same large blocks every time: at queue 16384 and batch
256, each ``[B, K]`` fp32 logits buffer (and its gradient, its softmax) is 16 MiB. glibc's
defaults hand such blocks back to the operating system when they are freed (``mmap`` above a
dynamic threshold; heap trimming above twice that), so the next step faults the same pages in
again, zero-filled, from the kernel. On the 2-core machine of our benchmarks that was ~12k
minor page faults and ~20-35 ms of system time per MoCo step at queue 16384: 20-25 % of the
step (``benchmarks/speed/mochi_overhead.py --recipe-runs``). PyTorch's CPU tuning guide recommends
an allocator that keeps memory for the same reason (jemalloc, tcmalloc); with glibc, two
``mallopt`` settings do it:

- ``M_MMAP_THRESHOLD`` = 32 MiB (glibc's largest): blocks below it come from the heap, and the
  threshold stops moving with each freed block;
- ``M_TRIM_THRESHOLD`` = 1 GiB: free memory at the top of the heap is returned to the OS only
  beyond that.

The cost: a process keeps up to ~1 GiB of freed memory for reuse instead of giving it back.
It changes the whole process, so no library call applies it: only the command line does,
when asked (``contrastmix pretrain RECIPE --keep-freed-memory``). The user's own
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables win. Other C
libraries (musl, macOS, Windows) are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` (32 MiB) and ``M_TRIM_THRESHOLD`` (1 GiB) for this
    process, so that blocks freed by one training step are reused by the next without page
    faults (module docstring).

    Returns:
        True when both settings were applied; False when the C library is not glibc, or the
        user set ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` (theirs are kept).
    """
    if not sys.platform.startswith("linux") or any(v in os.environ for v in _ENV):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on an unknown parameter or a value out of range
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
