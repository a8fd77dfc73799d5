"""CPU (numba) kernels of the MoCHi fast path (:mod:`contrastmix.mixing.mochi`).

The kernels are plain Python functions here (``*_py``); :func:`build` compiles them once per
process with ``numba.njit(cache=True)``: the parallel kernels into :class:`Kernels`, their
helpers into this module's globals, which is how the kernels call them and the shared
helpers (:func:`contrastmix._numba.sampled_threshold_kernel`,
:func:`contrastmix._numba.prefetch_kernel`,
:func:`contrastmix._counter_rng.counter_uniform_kernel`). Module globals, not closures: numba
keys its on-disk cache on a function's closure, and a closure holding other jitted functions
changes key in every process, so nothing would ever load from the cache. numba imports lazily
(the optional `cpu` extra). numba does not see edits to a helper in another file: clear the
``__pycache__`` ``*.nbi``/``*.nbc`` files after changing one.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Kernels", "build"]


class Kernels(NamedTuple):
    """The compiled parallel kernels (``*_py`` below, compiled by :func:`build`)."""

    pair_norms: Any
    select: Any
    coefficients: Any
    scatter_synthetic: Any

# set by build(): numba.prange and the compiled helpers the kernels call
_prange: Any = None
_sampled_threshold: Any = None
_prefetch_row: Any = None
_uniform: Any = None
_pair_norm: Any = None
_collect: Any = None
_compress: Any = None
_compress_ids: Any = None
_collect_tail: Any = None
_LANES = 16
_sort_keys: Any = None
_radix_sort: Any = None
_sort_desc: Any = None


def pair_norm_py(queue, x, y, a, b):  # type: ignore[no-untyped-def]
    # ||a queue[x] + b queue[y]|| in one pass over the two rows
    qx = queue[x]
    qy = queue[y]
    acc = a - a
    for c in range(qx.shape[0]):
        v = a * qx[c] + b * qy[c]
        acc += v * v
    return np.sqrt(acc)


def pair_norms_py(queue, pos_i, pos_j, w_i, w_j, out):  # type: ignore[no-untyped-def]
    # ||w_i n_{pos_i} + w_j n_{pos_j}|| for [B, s] pairs (strided views are fine), in
    # parallel over rows; the queue rows come in an order the hardware cannot guess, so
    # each pair prefetches the rows of the pair `ahead` pairs on
    s = pos_i.shape[1]
    ahead = 4
    for r in _prange(pos_i.shape[0]):
        for t in range(min(s, ahead)):
            _prefetch_row(queue, pos_i[r, t])
            _prefetch_row(queue, pos_j[r, t])
        for t in range(s):
            if t + ahead < s:
                _prefetch_row(queue, pos_i[r, t + ahead])
                _prefetch_row(queue, pos_j[r, t + ahead])
            out[r, t] = _pair_norm(queue, pos_i[r, t], pos_j[r, t], w_i[r, t], w_j[r, t])


def coefficients_py(queue, queue_sq, pos, picked, mix_w, cnt, qq, scale, s, out_w, out_cq,
                    out_syn):  # type: ignore[no-untyped-def]
    # The constant coefficients of the fast path and the synthetic logits' values, per
    # query in parallel (mochi._mochi_coefficients and synthetic_logits_from in one pass).
    # The type-1 loop is pair_norms_py's, fused with the weights: going through a shared
    # per-row norm helper and a second loop measured 1.2-1.3x slower.
    # type 1, t < s: n = ||a n_i + (1-a) n_j|| (pair_norm_py, rows prefetched `ahead`
    #   pairs on), w_i = a / n, w_j = (1-a) / n, syn = w_i l_i + w_j l_j;
    # type 2, t < s': b = beta, n' = sqrt(b^2 |q|^2 + (1-b)^2 |n_k|^2 + 2 b (1-b) q.n_k),
    #   w_k = (1-b) / n', c_q = scale b / n', syn = c_q |q|^2 + w_k l_k;
    # l = picked = scale * q.n at pos; a query with no eligible entry (cnt 0) gets
    # zero weights and -inf logits.
    s2 = out_cq.shape[1]
    ahead = 4
    tiny = np.float32(1e-12)
    one = np.float32(1.0)
    half = np.float32(0.5)
    for r in _prange(pos.shape[0]):
        if cnt[r] == 0:
            out_w[r, :] = 0
            out_cq[r, :] = 0
            out_syn[r, :] = -np.inf
            continue
        for t in range(min(s, ahead)):
            _prefetch_row(queue, pos[r, t])
            _prefetch_row(queue, pos[r, s + t])
        for t in range(s):
            if t + ahead < s:
                _prefetch_row(queue, pos[r, t + ahead])
                _prefetch_row(queue, pos[r, s + t + ahead])
            a = mix_w[r, t]
            b = one - a
            nrm = max(_pair_norm(queue, pos[r, t], pos[r, s + t], a, b), tiny)
            wi = a / nrm
            wj = b / nrm
            out_w[r, t] = wi
            out_w[r, s + t] = wj
            out_syn[r, t] = wi * picked[r, t] + wj * picked[r, s + t]
        q2 = qq[r]
        for t in range(s2):
            c = 2 * s + t
            bt = half * mix_w[r, s + t]
            ob = one - bt
            v = bt * bt * q2 + ob * ob * queue_sq[pos[r, c]] + 2 * bt * ob * (picked[r, c] / scale)
            nrm = max(np.sqrt(max(v, np.float32(0.0))), tiny)
            wk = ob / nrm
            cq = bt / nrm * scale
            out_w[r, c] = wk
            out_cq[r, t] = cq
            out_syn[r, s + t] = cq * q2 + wk * picked[r, c]


def scatter_synthetic_py(g_real, pos, w, c_q, p_syn, s, g_qq):  # type: ignore[no-untyped-def]
    # The synthetic logits' share of the gradient, per query in parallel:
    # g_real[r, pos[r, t]] += w[r, t] * p (p = p_syn[r, t] for type 1's two columns, t and
    # s + t; p_syn[r, s + t] for type 2's column 2s + t), g_qq[r] = sum_t c_q p (type 2).
    s2 = c_q.shape[1]
    for r in _prange(g_real.shape[0]):
        for t in range(s):
            p = p_syn[r, t]
            g_real[r, pos[r, t]] += w[r, t] * p
            g_real[r, pos[r, s + t]] += w[r, s + t] * p
        acc = 0.0
        for t in range(s2):
            p = p_syn[r, s + t]
            g_real[r, pos[r, 2 * s + t]] += w[r, 2 * s + t] * p
            acc += c_q[r, t] * p
        g_qq[r, 0] = acc


def collect_py(row, thr, ids, my_id, use_ids, cols, vals):  # type: ignore[no-untyped-def]
    # compaction of the columns (cols) and values (vals) of the entries >= thr (and not of
    # the query's own sample), in increasing column order; cols and vals have room for every
    # column plus one. 16 columns at a time with a masked compress-store (AVX-512
    # vpcompressd/vcompressps), then a branch-free scalar tail.
    n = row.shape[0]
    c = 0
    j = 0
    if use_ids:
        while j + _LANES <= n:
            c = _compress_ids(row, ids, j, thr, my_id, cols, vals, c)
            j += _LANES
    else:
        while j + _LANES <= n:
            c = _compress(row, j, thr, cols, vals, c)
            j += _LANES
    return _collect_tail(row, thr, ids, my_id, use_ids, cols, vals, c, j)


def collect_tail_py(row, thr, ids, my_id, use_ids, cols, vals, c, j0
                    ):  # type: ignore[no-untyped-def]
    # the scalar, branch-free version of collect_py from column j0 on
    if use_ids:
        for j in range(j0, row.shape[0]):
            cols[c] = j
            vals[c] = row[j]
            c += (row[j] >= thr) & (ids[j] != my_id)
    else:
        for j in range(j0, row.shape[0]):
            cols[c] = j
            vals[c] = row[j]
            c += row[j] >= thr
    return c


def sort_keys_py(vals, c):  # type: ignore[no-untyped-def]
    # order-preserving uint32 keys of vals[:c], ascending key = descending value
    # (+ 0.0 maps -0.0 to +0.0: equal values, one key), minus the smallest key
    keys = np.empty(c, np.uint32)
    kmin = np.uint32(0xFFFFFFFF)
    kmax = np.uint32(0)
    for t in range(c):
        bits = np.float32(vals[t] + np.float32(0.0)).view(np.uint32)
        kk = np.uint32(bits if bits >> np.uint32(31)
                       else ~(bits | np.uint32(0x80000000)))
        keys[t] = kk
        kmin = min(kmin, kk)
        kmax = max(kmax, kk)
    for t in range(c):
        keys[t] = np.uint32(keys[t] - kmin)
    return keys, np.uint32(kmax - kmin)


def radix_sort_py(keys, cols, c):  # type: ignore[no-untyped-def]
    # stable LSD radix sort (4 x 8 bits, one pass for the four histograms, bytes that
    # every key shares skipped) of the keys; returns the cols in key order
    count = np.zeros((4, 257), np.int64)
    for t in range(c):
        kk = keys[t]
        for p in range(4):
            count[p, ((kk >> np.uint32(8 * p)) & np.uint32(255)) + 1] += 1
    keys = keys.copy()
    kb = np.empty(c, np.uint32)
    cs = cols[:c].copy()
    cb = np.empty(c, np.int32)
    for p in range(4):
        cp = count[p]
        if cp[1:].max() == c:
            continue
        for t in range(256):
            cp[t + 1] += cp[t]
        shift = np.uint32(8 * p)
        for t in range(c):
            byte = (keys[t] >> shift) & np.uint32(255)
            dst = cp[byte]
            kb[dst] = keys[t]
            cb[dst] = cs[t]
            cp[byte] = dst + 1
        keys, kb = kb, keys
        cs, cb = cb, cs
    return cs


def sort_desc_py(vals, cols, c, n):  # type: ignore[no-untyped-def]
    # The first min(c, n) of cols[:c] by descending value (vals[:c]), equal values by
    # increasing column (cols come in increasing order); the result may hold more. A
    # stable bucket pass on the top bits of the keys (about 4c buckets) that keeps only
    # the buckets up to the one holding the n-th entry, then insertion sort, which only
    # moves entries within a bucket; when that would move many (skewed values), the LSD
    # radix sort of all c instead.
    keys, span = _sort_keys(vals, c)
    shift = np.uint32(0)
    while (span >> shift) >= np.uint32(max(4 * c, 1)):
        shift += np.uint32(1)
    nb = np.int64(span >> shift) + 1
    count = np.zeros(nb + 1, np.int64)
    for t in range(c):
        count[np.int64(keys[t] >> shift) + 1] += 1
    # prefix sums only up to the first bucket boundary with min(c, n) entries before it
    # (buckets 0 .. cut - 1; the others are dropped), the running sum in a register: a
    # loop that adds count[b] into count[b + 1] waits on the store every iteration
    acc = count[0]
    cut = 0
    while cut < nb:
        cut += 1
        acc += count[cut]
        count[cut] = acc
        if acc >= n:
            break
    m = acc
    # branch-free scatter: the entries of the dropped buckets all go to slot `cut`, which
    # starts at m (past the kept ones), so no unpredictable branch per entry
    kb = np.empty(c, np.uint32)
    cb = np.empty(c, np.int32)
    for t in range(c):
        b = min(np.int64(keys[t] >> shift), cut)
        dst = count[b]
        kb[dst] = keys[t]
        cb[dst] = cols[t]
        count[b] = dst + 1
    budget = 8 * m + 64
    for t in range(1, m):
        kk = kb[t]
        cc = cb[t]
        u = t
        while u > 0 and kb[u - 1] > kk:
            kb[u] = kb[u - 1]
            cb[u] = cb[u - 1]
            u -= 1
        kb[u] = kk
        cb[u] = cc
        budget -= t - u
        if budget < 0:
            return _radix_sort(keys, cols, c)
    return cb


def select_py(sims, seed, n, s, s2, ids, qids, use_ids, out_pos, out_val, out_cnt, out_w,
              out_top):  # type: ignore[no-untyped-def]
    # Per float32 row (query), in parallel over rows:
    # 1. a threshold from a sample of the row: 16 consecutive values of each run of 128
    #    (1/8 of the row's cache lines; contrastmix._numba.sampled_threshold_kernel);
    #    one pass (collect_py) keeps every eligible value >= it; if fewer than n
    #    survive, a pass with a lower guess, then one that keeps every eligible value, so
    #    the hard set is exact whatever the sample says (-inf and NaN are never eligible);
    # 2. sort of the survivors (sort_desc_py): descending value, ties by queue row;
    #    out_top = the largest eligible value (-inf if none);
    # 3. draws from the counter-based stream (contrastmix._counter_rng), value
    #    r * (3s + 2s') + t; rank floor(u * count) -> queue row (out_pos) and its value
    #    (out_val), as the torch path.
    k = sims.shape[1]
    n_idx = 2 * s + s2
    width = n_idx + s + s2
    lowest = np.float32(-3.4028234663852886e38)
    runs = k // 128
    for r in _prange(sims.shape[0]):
        row = sims[r]
        my_id = qids[r] if use_ids else 0
        if runs >= 8:
            # run u gives its block number (u * 0x9E3779B1 >> 29) & 7 of 16 columns: a
            # scrambled offset, so that a queue with a period (the same batch enqueued
            # again and again) does not show the sample the same few samples each time
            smp = np.empty(runs * 16, np.float32)
            for u in range(runs):
                off = u * 128 + 16 * np.int64(((u * 0x9E3779B1) >> 29) & 7)
                for v in range(16):
                    smp[u * 16 + v] = row[off + v]
        else:
            smp = row[::8]
        thr = max(_sampled_threshold(smp, n, 8), lowest)
        cols = np.empty(k + 1, np.int32)
        vals = np.empty(k + 1, np.float32)
        c = _collect(row, thr, ids, my_id, use_ids, cols, vals)
        if c < n:  # the sample misled the threshold: a 4x lower guess, then keep all
            thr = max(_sampled_threshold(smp, 4 * n, 8), lowest)
            c = _collect(row, thr, ids, my_id, use_ids, cols, vals)
            if c < n:  # (or fewer than n eligible)
                c = _collect(row, lowest, ids, my_id, use_ids, cols, vals)
        hard = _sort_desc(vals, cols, c, n)
        cnt = min(c, n)
        out_cnt[r] = cnt
        out_top[r] = row[hard[0]] if cnt > 0 else -np.inf
        # this query's stream values, in a loop the compiler vectorises
        u = np.empty(width, np.float32)
        for t in range(width):
            u[t] = _uniform(seed, r * width + t)
        m = max(cnt, 1)
        cf = np.float32(m)
        for t in range(n_idx):
            col = hard[min(np.int64(u[t] * cf), m - 1)] if cnt > 0 else 0
            out_pos[r, t] = col
            out_val[r, t] = row[col]
        out_w[r, :] = u[n_idx:]


@functools.lru_cache(maxsize=1)
def build() -> Kernels:
    """Compile (or load from numba's disk cache) the kernels.

    Returns:
        The parallel kernels (:class:`Kernels`). Raises ``ImportError`` without numba.
    """
    global _prange, _sampled_threshold, _prefetch_row, _uniform, _pair_norm, _collect
    global _sort_keys, _radix_sort, _sort_desc, _compress, _compress_ids, _collect_tail
    import numba

    from contrastmix._counter_rng import counter_uniform_kernel
    from contrastmix._numba import prefetch_kernel, sampled_threshold_kernel

    jit = functools.partial(numba.njit, cache=True)
    _prange = numba.prange
    _sampled_threshold = sampled_threshold_kernel()
    _prefetch_row = prefetch_kernel()
    _uniform = counter_uniform_kernel()
    _pair_norm = jit(fastmath=True)(pair_norm_py)
    _collect_tail = jit()(collect_tail_py)
    _compress, _compress_ids = _compress_intrinsics()
    _collect = jit()(collect_py)
    if not _collect_works(_collect):  # pragma: no cover - an LLVM without the intrinsic
        _collect = jit()(collect_scalar_py)
    _sort_keys = jit()(sort_keys_py)
    _radix_sort = jit()(radix_sort_py)
    _sort_desc = jit()(sort_desc_py)
    par = jit(parallel=True)
    return Kernels(
        pair_norms=par(pair_norms_py), select=par(select_py),
        coefficients=jit(parallel=True, fastmath=True)(coefficients_py),
        scatter_synthetic=par(scatter_synthetic_py),
    )


def collect_scalar_py(row, thr, ids, my_id, use_ids, cols, vals
                      ):  # type: ignore[no-untyped-def]
    # collect_py without the vector part (where the compress-store does not compile)
    return _collect_tail(row, thr, ids, my_id, use_ids, cols, vals, 0, 0)


def _collect_works(collect: Any) -> bool:
    """Whether the vectorised ``collect`` compiles and agrees with the scalar loop."""
    rng = np.random.default_rng(0)
    row = rng.standard_normal(1000).astype(np.float32)
    row[::7] = -np.inf
    ids = rng.integers(0, 5, 1000)
    for use_ids in (False, True):
        got = np.empty(1001, np.int32)
        want = np.empty(1001, np.int32)
        got_v = np.empty(1001, np.float32)
        want_v = np.empty(1001, np.float32)
        try:
            c = collect(row, np.float32(0.3), ids, 2, use_ids, got, got_v)
        except Exception:
            return False
        w = _collect_tail(row, np.float32(0.3), ids, 2, use_ids, want, want_v, 0, 0)
        if (c != w or not np.array_equal(got[:c], want[:w])
                or not np.array_equal(got_v[:c], want_v[:w])):
            return False
    return True


def _compress_intrinsics() -> tuple[Any, Any]:
    """``compress(row, j, thr, cols, vals, c)`` and ``compress_ids(row, ids, j, thr, my_id,
    cols, vals, c)``: write the columns ``j .. j+15`` with ``row >= thr`` (and
    ``ids != my_id``) to ``cols[c:]`` and their values to ``vals[c:]``, in order (LLVM
    ``masked.compressstore``); return the new ``c``. ``row`` and ``ids`` must be contiguous
    and hold 16 entries from ``j`` on."""
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.core.errors import TypingError
    from numba.extending import intrinsic

    lanes = _LANES
    f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
    vi32 = ir.VectorType(i32, lanes)

    def splat(builder, value, vty):  # type: ignore[no-untyped-def]
        v = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(i32, 0))
        return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined),
                                      ir.Constant(vi32, [0] * lanes))

    def load(context, builder, aryty, ary, j, elem):  # type: ignore[no-untyped-def]
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [j], wraparound=False)
        vty = ir.VectorType(elem, lanes)
        return builder.load(builder.bitcast(ptr, ir.PointerType(vty)), align=1)

    def emit(context, builder, sig, args, with_ids):  # type: ignore[no-untyped-def]
        if with_ids:
            rowty, idsty, jty, thrty, myty, colsty, valsty, cty = sig.args
            row_v, ids_v, j_v, thr_v, my_v, cols_v, vals_v, c_v = args
        else:
            rowty, jty, thrty, colsty, valsty, cty = sig.args
            row_v, j_v, thr_v, cols_v, vals_v, c_v = args
        j = context.cast(builder, j_v, jty, types.intp)
        c = context.cast(builder, c_v, cty, types.intp)
        row = context.make_array(rowty)(context, builder, row_v)
        vals = load(context, builder, rowty, row, j, f32)
        thr = context.cast(builder, thr_v, thrty, types.float32)
        mask = builder.fcmp_ordered(">=", vals, splat(builder, thr, ir.VectorType(f32, lanes)))
        if with_ids:
            ids = context.make_array(idsty)(context, builder, ids_v)
            idv = load(context, builder, idsty, ids, j, i64)
            my = context.cast(builder, my_v, myty, types.int64)
            mask = builder.and_(mask, builder.icmp_signed(
                "!=", idv, splat(builder, my, ir.VectorType(i64, lanes))))
        cols_ary = context.make_array(colsty)(context, builder, cols_v)
        dst = cgutils.get_item_pointer(context, builder, colsty, cols_ary, [c],
                                       wraparound=False)
        idx = builder.add(splat(builder, builder.trunc(j, i32), vi32),
                          ir.Constant(vi32, list(range(lanes))))
        store = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [vi32, ir.PointerType(i32),
                                            ir.VectorType(ir.IntType(1), lanes)]),
            f"llvm.masked.compressstore.v{lanes}i32",
        )
        builder.call(store, [idx, builder.bitcast(dst, ir.PointerType(i32)), mask])
        vals_ary = context.make_array(valsty)(context, builder, vals_v)
        vdst = cgutils.get_item_pointer(context, builder, valsty, vals_ary, [c],
                                        wraparound=False)
        store_f = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [ir.VectorType(f32, lanes), ir.PointerType(f32),
                                            ir.VectorType(ir.IntType(1), lanes)]),
            f"llvm.masked.compressstore.v{lanes}f32",
        )
        builder.call(store_f, [vals, builder.bitcast(vdst, ir.PointerType(f32)), mask])
        bits = builder.bitcast(mask, ir.IntType(lanes))
        ctpop = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(lanes), [ir.IntType(lanes)]),
            f"llvm.ctpop.i{lanes}",
        )
        return builder.add(c, builder.zext(builder.call(ctpop, [bits]), i64))

    def check(row, cols, vals, ids=None):  # type: ignore[no-untyped-def]
        ok = (row.dtype == types.float32 and row.layout == "C" and cols.dtype == types.int32
              and vals.dtype == types.float32
              and (ids is None or (ids.dtype == types.int64 and ids.layout == "C")))
        if not ok:
            raise TypingError("compress: float32/int64 C-contiguous inputs, int32 output")

    @intrinsic
    def compress(typingctx, row, j, thr, cols, vals, c):  # type: ignore[no-untyped-def]
        check(row, cols, vals)
        sig = types.int64(row, j, thr, cols, vals, c)
        return sig, lambda ctx, b, sg, a: emit(ctx, b, sg, a, False)

    @intrinsic
    def compress_ids(typingctx, row, ids, j, thr, my_id, cols, vals, c
                     ):  # type: ignore[no-untyped-def]
        check(row, cols, vals, ids)
        sig = types.int64(row, ids, j, thr, my_id, cols, vals, c)
        return sig, lambda ctx, b, sg, a: emit(ctx, b, sg, a, True)

    return compress, compress_ids
