"""Exact kNN neighbours from a bf16 screening product and an fp32 re-ranking (CPU).

The ``[M, N]`` similarity product dominates kNN evaluation. On CPUs with bf16 matrix units
(AVX512-BF16 / AMX) a bf16 product is several times faster than fp32; this module makes its
*result exact* again:

* Error bound per query row ``q`` and bank row ``f``: with ``q~, f~`` the bf16-rounded inputs
  (measured: ``e_q = ||q~ - q||``, ``e_f = max_f ||f~ - f||``, ``n_f = max_f ||f~||``), the fp32
  accumulation ``a`` of ``q~·f~`` satisfies ``|a - q·f| <= e_q n_f + ||q|| e_f
  + d 2^-24 ||q~|| n_f =: e_in``, and the bf16 output ``s~`` rounds ``a`` to 8 significant bits:
  ``|s~ - a| <= 2^-8 |a| <= c |s~|`` with ``c = 2^-8 / (1 - 2^-8)``.
* If ``t~`` is the k-th largest ``s~`` of a row, the k rows with ``s~ >= t~`` all have exact
  ``s >= L = t~ - e_in - c |t~|`` (the bound ``s~ - e_in - c|s~|`` increases with ``s~``), so
  every one of the exact top-k has ``s >= L``; a row can only be one if
  ``s~ + e_in + c |s~| >= L``. Those rows are the candidates.
* The candidates are re-scored with fp32 dot products and the exact top-k is taken, equal values
  ordered by bank index — the same neighbours as the fp32 path.

One numba kernel does, per query row and in parallel over rows: a sampled threshold (so one
pass collects a small superset), the k-th largest screening value, the candidate band, the fp32
re-scoring and a stable sort. numba is optional (the ``cpu`` extra) and imported only when the
kernel is first built; without it :func:`bf16_matmul_available` is False and
:func:`contrastmix.eval.knn.knn_scores` uses its torch path.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import Tensor

from contrastmix._numba import numba_enabled, run_parallel, sampled_threshold_kernel

__all__ = ["bf16_matmul_available", "bank_rounding", "screening_eps", "rescored_topk"]


@functools.lru_cache(maxsize=1)
def bf16_matmul_available() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX-BF16) and the
    optional numba accelerator is installed and enabled (:func:`contrastmix._numba.numba_enabled`:
    ``pip install contrastmix[cpu]``, not ``CONTRASTMIX_NUMBA=0``)."""
    if not numba_enabled():
        return False
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


#: Relative bound of the bf16 output rounding, ``2^-8 / (1 - 2^-8)``.
OUT_REL = 2.0**-8 / (1.0 - 2.0**-8)


def bank_rounding(bank: Tensor, bank_bf16: Tensor) -> tuple[float, float]:
    """``(e_f, n_f)``: the largest ``||f~ - f||`` and ``||f~||`` over the bank's rows
    (computed in float32, raised by 0.1 % for that rounding)."""
    fb = bank_bf16.float()
    e_f = float(torch.linalg.vector_norm(fb - bank, dim=1).max()) * 1.001
    n_f = float(torch.linalg.vector_norm(fb, dim=1).max()) * 1.001
    return e_f, n_f


def screening_eps(queries: Tensor, queries_bf16: Tensor, e_f: float, n_f: float, dim: int
                  ) -> Tensor:
    """``[M]`` input-error bounds ``e_in`` of the bf16 product (see module docstring), each
    raised by 1 % and ``2^-20`` for the rounding of this very computation."""
    q64 = queries.double()
    qb = queries_bf16.double()
    e_q = torch.linalg.vector_norm(qb - q64, dim=1)
    n_q = torch.linalg.vector_norm(q64, dim=1)
    n_qb = torch.linalg.vector_norm(qb, dim=1)
    e_in = e_q * n_f + n_q * e_f + dim * 2.0**-24 * n_qb * n_f
    return (e_in * 1.01 + 2.0**-20).float()


# The kernel and its helpers: plain functions compiled by _kernel() into these globals (not a
# closure: numba keys its disk cache on a function's closure, and jitted functions there change
# key in every process, so nothing would load from the cache).
_STEP = 8  # 1-in-8 sample for the threshold
_prange: Any = None
_dot: Any = None
_bf16: Any = None
_sampled_threshold: Any = None


def _dot_py(a, b):  # type: ignore[no-untyped-def]
    acc = np.float32(0.0)
    for c in range(a.shape[0]):
        acc += a[c] * b[c]
    return acc


def _bf16_py(x):  # type: ignore[no-untyped-def]
    return np.uint32(np.uint32(x) << np.uint32(16)).view(np.float32)


def _rescored_py(sims16, queries, bank, k, e_in, c_out, out_v, out_i
             ):  # type: ignore[no-untyped-def]
    n = sims16.shape[1]
    for r in _prange(sims16.shape[0]):
        row = sims16[r]
        e = e_in[r]
        # superset band for the first pass (|s~| <= 1.01 for unit rows)
        band = np.float32(2.0 * e + 2.1 * c_out)
        # 1. threshold from a 1-in-8 sample (contrastmix._numba.sampled_threshold_kernel)
        sample = np.empty((n + _STEP - 1) // _STEP, np.float32)
        for t in range(sample.shape[0]):
            sample[t] = _bf16(row[t * _STEP])
        thr = _sampled_threshold(sample, k, _STEP)
        # 2. collect every screening value >= thr - band (a superset of the band below the
        #    k-th largest when at least k values are >= thr; otherwise take every row)
        cap = min(n, 8 * k + 8192)  # room for the expected survivors, regrown if needed
        vals = np.empty(cap, np.float32)
        cols = np.empty(cap, np.int64)
        signed = row.view(np.int16)
        c = 0
        for _attempt in range(3):
            c = 0
            above = 0
            low = thr - band
            # integer pre-filter: positive bf16 bit patterns order like int16 values and
            # negative ones are negative int16s, so for low > 0 the rounded-down bits of
            # low reject most rows without decoding; otherwise every row passes it
            lowbits = np.int16(-32768)
            if low > 0:
                lowbits = np.int16(np.float32(low).view(np.uint32) >> np.uint32(16))
            for j in range(n):
                if signed[j] >= lowbits:
                    v = _bf16(row[j])
                    if v >= low:
                        if c < cap:
                            vals[c] = v
                            cols[c] = j
                        c += 1
                        if v >= thr:
                            above += 1
            if c <= cap and (above >= k or thr == -np.inf):
                break
            if above < k:  # the sample misled the threshold: keep every row
                thr = np.float32(-np.inf)
            cap = n
            vals = np.empty(cap, np.float32)
            cols = np.empty(cap, np.int64)
        # 3. the k-th largest screening value t~, the lower bound L of the exact k-th value,
        #    and the rows that can still reach it
        kk = min(k, c)
        kth = np.partition(vals[:c].copy(), c - kk)[c - kk]
        lim = kth - e - c_out * abs(kth)
        m = 0
        for t in range(c):
            if vals[t] + e + c_out * abs(vals[t]) >= lim:
                cols[m] = cols[t]
                m += 1
        # 4. fp32 re-scoring and a stable sort (candidates are in bank order)
        q = queries[r]
        exact = np.empty(m, np.float32)
        for t in range(m):
            exact[t] = -_dot(q, bank[cols[t]])
        order = np.argsort(exact, kind="mergesort")
        for t in range(min(k, m)):
            out_v[r, t] = -exact[order[t]]
            out_i[r, t] = cols[order[t]]



@functools.lru_cache(maxsize=1)
def _kernel() -> Any:
    global _prange, _dot, _bf16, _sampled_threshold
    import numba

    _prange = numba.prange
    _dot = numba.njit(fastmath=True, cache=True)(_dot_py)
    _bf16 = numba.njit(cache=True, inline="always")(_bf16_py)
    _sampled_threshold = sampled_threshold_kernel()
    return numba.njit(parallel=True, cache=True)(_rescored_py)


def rescored_topk(bank: Tensor, queries: Tensor, k: int, chunk_size: int
                  ) -> list[tuple[Tensor, Tensor]]:
    """Exact top-``k`` (values descending, equal values by bank index) of ``queries @ bank.T``.

    Args:
        bank: ``[N, d]`` L2-normalised float32 CPU rows.
        queries: ``[M, d]`` L2-normalised float32 CPU rows.
        k: neighbours, ``1 <= k <= N``.
        chunk_size: query rows per screening product.

    Returns:
        Per chunk, ``(values [m, k] float32, indices [m, k] int64)``.
    """
    kern = _kernel()
    bank_bf = bank.to(torch.bfloat16)
    e_f, n_f = bank_rounding(bank, bank_bf)
    # a row-major [d, N] copy and one reused output buffer: oneDNN's bf16 path (AMX) is several
    # times faster on them than on a transposed view with a fresh output per chunk
    bank_bf_t = bank_bf.T.contiguous()
    del bank_bf
    bank_np = bank.contiguous().numpy()
    rows = min(chunk_size, queries.shape[0])
    buf = torch.empty(rows, bank.shape[0], dtype=torch.bfloat16)
    out = []
    for s in range(0, queries.shape[0], chunk_size):
        q = queries[s : s + chunk_size].contiguous()
        qb = q.to(torch.bfloat16)
        e_in = screening_eps(q, qb, e_f, n_f, bank.shape[1])
        sims = torch.mm(qb, bank_bf_t, out=buf[: q.shape[0]])
        vals = torch.empty(q.shape[0], k, dtype=torch.float32)
        idx = torch.empty(q.shape[0], k, dtype=torch.long)
        run_parallel(kern, sims.view(torch.int16).numpy().view(np.uint16), q.numpy(), bank_np,
                     k, e_in.numpy(), np.float32(OUT_REL), vals.numpy(), idx.numpy())
        out.append((vals, idx))
    return out
