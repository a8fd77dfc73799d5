"""CPU (numba) kernels of the MoCHi fast path (:mod:`contrastmix.mixing.mochi`).

The kernels are plain Python functions here (``*_py``); :func:`build` compiles them once per
process with ``numba.njit(cache=True)`` into this module's globals (``_select``,
``_pair_norms`` and their helpers), which is also how they call each other and the shared
helpers (:func:`contrastmix._numba.sampled_threshold_kernel`,
:func:`contrastmix._numba.prefetch_kernel`,
:func:`contrastmix._counter_rng.counter_uniform_kernel`). Module globals, not closures: numba
keys its on-disk cache on a function's closure, and a closure holding other jitted functions
changes key in every process, so nothing would ever load from the cache. numba imports lazily
(it ships with umap-learn). numba does not see edits to a helper in another file: clear the
``__pycache__`` ``*.nbi``/``*.nbc`` files after changing one.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = ["build"]

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


def collect_py(row, thr, ids, my_id, use_ids, cols):  # type: ignore[no-untyped-def]
    # compaction of the columns of the values >= thr (and not of the query's own sample),
    # in increasing order; cols has room for every column plus one. 16 columns at a time
    # with a masked compress-store (AVX-512 vpcompressd), then a branch-free scalar tail.
    n = row.shape[0]
    c = 0
    j = 0
    if use_ids:
        while j + _LANES <= n:
            c = _compress_ids(row, ids, j, thr, my_id, cols, c)
            j += _LANES
    else:
        while j + _LANES <= n:
            c = _compress(row, j, thr, cols, c)
            j += _LANES
    return _collect_tail(row, thr, ids, my_id, use_ids, cols, c, j)


def collect_tail_py(row, thr, ids, my_id, use_ids, cols, c, j0):  # type: ignore[no-untyped-def]
    # the scalar, branch-free version of collect_py from column j0 on
    if use_ids:
        for j in range(j0, row.shape[0]):
            cols[c] = j
            c += (row[j] >= thr) & (ids[j] != my_id)
    else:
        for j in range(j0, row.shape[0]):
            cols[c] = j
            c += row[j] >= thr
    return c


def sort_keys_py(row, cols, c):  # type: ignore[no-untyped-def]
    # order-preserving uint32 keys of row[cols[:c]], ascending key = descending
    # value (+ 0.0 maps -0.0 to +0.0: equal values, one key), minus the smallest key
    keys = np.empty(c, np.uint32)
    kmin = np.uint32(0xFFFFFFFF)
    kmax = np.uint32(0)
    for t in range(c):
        bits = np.float32(row[cols[t]] + np.float32(0.0)).view(np.uint32)
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


def sort_desc_py(row, cols, c):  # type: ignore[no-untyped-def]
    # cols[:c] by descending row value, equal values by increasing column (cols come
    # in increasing order). A stable bucket pass on the top bits of the keys (about
    # c buckets), then insertion sort, which only moves entries within a bucket;
    # when that would move many (skewed values), the LSD radix sort instead.
    keys, span = _sort_keys(row, cols, c)
    shift = np.uint32(0)
    while (span >> shift) >= np.uint32(max(c, 1)):
        shift += np.uint32(1)
    nb = np.int64(span >> shift) + 1
    count = np.zeros(nb + 1, np.int64)
    for t in range(c):
        count[np.int64(keys[t] >> shift) + 1] += 1
    for b in range(nb):
        count[b + 1] += count[b]
    kb = np.empty(c, np.uint32)
    cb = np.empty(c, np.int32)
    for t in range(c):
        b = np.int64(keys[t] >> shift)
        dst = count[b]
        kb[dst] = keys[t]
        cb[dst] = cols[t]
        count[b] = dst + 1
    budget = 8 * c + 64
    for t in range(1, c):
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
    # 1. a threshold from a 1-in-8 sample (contrastmix._numba.sampled_threshold_kernel);
    #    one pass (collect_py) keeps every eligible value >= it; if fewer than n
    #    survive, a second pass keeps every eligible value, so the hard set is exact
    #    whatever the sample says (-inf and NaN are never eligible);
    # 2. sort of the survivors (sort_desc_py): descending value, ties by queue row;
    #    out_top = the largest eligible value (-inf if none);
    # 3. draws from the counter-based stream (contrastmix._counter_rng), value
    #    r * (3s + 2s') + t; rank floor(u * count) -> queue row (out_pos) and its value
    #    (out_val), as the torch path.
    k = sims.shape[1]
    n_idx = 2 * s + s2
    width = n_idx + s + s2
    lowest = np.float32(-3.4028234663852886e38)
    for r in _prange(sims.shape[0]):
        row = sims[r]
        my_id = qids[r] if use_ids else 0
        thr = max(_sampled_threshold(row[::8], n, 8), lowest)
        cols = np.empty(k + 1, np.int32)
        c = _collect(row, thr, ids, my_id, use_ids, cols)
        if c < n:  # the sample misled the threshold (or < n eligible): keep all
            c = _collect(row, lowest, ids, my_id, use_ids, cols)
        hard = _sort_desc(row, cols, c)
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
def build() -> tuple[Any, Any, Any]:
    """Compile (or load from numba's disk cache) the kernels.

    Returns:
        ``(pair_norms, select, scatter_add_rows)``, the parallel kernels. Raises
        ``ImportError`` without numba.
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
    return (jit(parallel=True)(pair_norms_py), jit(parallel=True)(select_py),
            jit(parallel=True)(scatter_add_rows_py))


def scatter_add_rows_py(out, pos, src):  # type: ignore[no-untyped-def]
    # out[r, pos[r, t]] += src[r, t], in parallel over rows (each row's adds stay in cache)
    for r in _prange(out.shape[0]):
        for t in range(pos.shape[1]):
            out[r, pos[r, t]] += src[r, t]


def collect_scalar_py(row, thr, ids, my_id, use_ids, cols):  # type: ignore[no-untyped-def]
    # collect_py without the vector part (where the compress-store does not compile)
    return _collect_tail(row, thr, ids, my_id, use_ids, cols, 0, 0)


def _collect_works(collect: Any) -> bool:
    """Whether the vectorised ``collect`` compiles and agrees with the scalar loop."""
    rng = np.random.default_rng(0)
    row = rng.standard_normal(1000).astype(np.float32)
    row[::7] = -np.inf
    ids = rng.integers(0, 5, 1000)
    for use_ids in (False, True):
        got = np.empty(1001, np.int32)
        want = np.empty(1001, np.int32)
        try:
            c = collect(row, np.float32(0.3), ids, 2, use_ids, got)
        except Exception:
            return False
        w = _collect_tail(row, np.float32(0.3), ids, 2, use_ids, want, 0, 0)
        if c != w or not np.array_equal(got[:c], want[:w]):
            return False
    return True


def _compress_intrinsics() -> tuple[Any, Any]:
    """``compress(row, j, thr, cols, c)`` and ``compress_ids(row, ids, j, thr, my_id, cols,
    c)``: write the columns ``j .. j+15`` with ``row >= thr`` (and ``ids != my_id``) to
    ``cols[c:]`` in order (LLVM ``masked.compressstore``); return the new ``c``. ``row`` and
    ``ids`` must be contiguous and hold 16 entries from ``j`` on."""
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
            rowty, idsty, jty, thrty, myty, colsty, cty = sig.args
            row_v, ids_v, j_v, thr_v, my_v, cols_v, c_v = args
        else:
            rowty, jty, thrty, colsty, cty = sig.args
            row_v, j_v, thr_v, cols_v, c_v = args
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
        bits = builder.bitcast(mask, ir.IntType(lanes))
        ctpop = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(lanes), [ir.IntType(lanes)]),
            f"llvm.ctpop.i{lanes}",
        )
        return builder.add(c, builder.zext(builder.call(ctpop, [bits]), i64))

    def check(row, cols, ids=None):  # type: ignore[no-untyped-def]
        ok = (row.dtype == types.float32 and row.layout == "C" and cols.dtype == types.int32
              and (ids is None or (ids.dtype == types.int64 and ids.layout == "C")))
        if not ok:
            raise TypingError("compress: float32/int64 C-contiguous inputs, int32 output")

    @intrinsic
    def compress(typingctx, row, j, thr, cols, c):  # type: ignore[no-untyped-def]
        check(row, cols)
        sig = types.int64(row, j, thr, cols, c)
        return sig, lambda ctx, b, sg, a: emit(ctx, b, sg, a, False)

    @intrinsic
    def compress_ids(typingctx, row, ids, j, thr, my_id, cols, c
                     ):  # type: ignore[no-untyped-def]
        check(row, cols, ids)
        sig = types.int64(row, ids, j, thr, my_id, cols, c)
        return sig, lambda ctx, b, sg, a: emit(ctx, b, sg, a, True)

    return compress, compress_ids
