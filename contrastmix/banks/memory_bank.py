"""FIFO memory bank (MoCo queue / kNN bank) with exact and faiss-approximate top-k search.

The MoCo queue of He et al., "Momentum Contrast for Unsupervised Visual Representation
Learning" (CVPR 2020) and the memory bank of Wu et al., "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination" (CVPR 2018), as one ring buffer. See docs/methods.md §1
("Base": enqueue the keys of the *global* batch, FIFO ring buffer of any batch size) and §9
(kNN monitor: clamp k to the bank size). Approximate search uses faiss (Johnson, Douze &
Jégou, "Billion-scale similarity search with GPUs", 2017): IVF-Flat and HNSW (Malkov &
Yashunin, 2018).

Storage lives in registered buffers, so the bank follows ``.to(device)`` and lands in
(Lightning) checkpoints with no extra code; approximate indexes are derived data, rebuilt from
the buffers after ``load_state_dict``. The write pointer and fill count are also kept as
Python ints next to their buffers (re-read from them after ``load_state_dict``), so
:meth:`MemoryBank.add`, :attr:`MemoryBank.features` and ``len(bank)`` never read a device
value back: with the ``"torch"`` backend a training step's enqueue and search do not
synchronise with a GPU (the feature value check is skipped there, see
:mod:`contrastmix._validation`; under DDP the gather exchanges the ranks' batch sizes).

Index maintenance of the approximate backends (measured in ``benchmarks/speed/bank_search.py``):

* ``"faiss-ivf"``: ``IndexIVFFlat`` keyed by *slot* (row of the ring buffer) with a hashtable
  direct map, so overwriting rows is an O(rows) ``remove_ids`` + ``add_with_ids`` per
  :meth:`MemoryBank.add`. The coarse centroids are (re-)trained lazily at the next search
  whenever the fill count has doubled since the last training or the bank has become full,
  and after every ``retrain_every`` added rows (default: once per full turn of the ring), because
  the features drift during training.
* ``"faiss-hnsw"``: faiss HNSW graphs cannot delete nodes, so overwritten rows are marked stale
  (an ``IDSelectorBitmap`` hides them from search) and the graph is rebuilt from the buffer
  once it holds ``size`` stale nodes (once per full turn of the ring).

Defaults (``nlist=None`` = ``4·sqrt(filled)`` rounded to a power of two, ``nprobe=16``,
``train_points_per_list=40``; ``hnsw_m=16, ef_construction=40, ef_search=128``) were measured
with ``benchmarks/speed/bank_search.py`` on a 1M x 128 bank of 1000 noisy clusters, one step = add
256 rows + search 256 queries for k=64, on a 2-core CPU: exact torch 1.43 s/step; IVF with
4096 cells 67 ms/step (21.5x) at recall@64 0.976, build 31 s (re-training once per turn ~8
ms/step amortised); HNSW 136 ms/step (10.5x) at recall@64 0.67 only, build 124 s. With the
former fixed ``nlist=1024`` IVF took 139-156 ms/step (7.8-9.7x) that day: each query scanned
~15.5k rows (16 cells of ~1k), and the scan is bound by memory bandwidth. Prefer
``"faiss-ivf"``; raise ``hnsw_m``/``ef_search`` for HNSW.
faiss-gpu, when installed, serves a bank whose buffers are on a GPU: ``"faiss-flat"`` searches
by brute force there (``faiss.knn_gpu``), ``"faiss-ivf"`` keeps a GPU IVF index (append-only:
faiss's GPU indexes cannot remove rows, see ``_IVFIndex``). ``"faiss-hnsw"`` has no GPU
version in faiss and stays on the CPU. (No GPU was available where this was written: the GPU
calls are untested; the append-only bookkeeping is tested with a CPU index.)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from contrastmix._validation import (
    check_positive,
    check_same_length,
    check_tensor,
)
from contrastmix.distributed import gather_no_grad, is_distributed

__all__ = ["MemoryBank", "BACKENDS"]

BACKENDS = ("torch", "faiss-flat", "faiss-ivf", "faiss-hnsw")

# Exact torch search: at most this many score entries (B x rows) per chunk (64 MiB in fp32).
_CHUNK_ELEMENTS = 1 << 24


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError(
            "the faiss backends need faiss: `pip install faiss-cpu` (or faiss-gpu)"
        ) from err
    return faiss


def auto_nlist(rows: int) -> int:
    """IVF cells for ``rows`` vectors: ``4·sqrt(rows)`` rounded to a power of two (>= 1)."""
    return 1 << max(0, round(math.log2(4 * math.sqrt(max(rows, 1)))))


def _to_bank(x: Tensor, dev: torch.device, dtype: torch.dtype) -> Tensor:
    """``x`` detached on the bank's device in ``dtype``. A host-to-accelerator copy is
    asynchronous (a blocking one waits for the device's queued work); to the CPU it blocks, so
    the result is ready when read."""
    return x.detach().to(dev, dtype, non_blocking=dev.type != "cpu")


def _gather_rows(feats: Tensor, lab: Tensor | None, idx: Tensor | None
                 ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """All ranks' ``feats [n, d]`` float32 and optional ``lab``/``idx [n]`` long, in rank
    order, with one gather: the three are packed bit for bit into one int32 tensor (one
    exchange of batch sizes and one ``all_gather`` instead of three of each).

    Layout per row: two int32 per long (labels, then ids), then the ``d`` feature words, then
    one padding word when the width is odd, so the long columns stay 8-byte aligned.
    """
    longs = [t for t in (lab, idx) if t is not None]
    parts = [t.contiguous().view(torch.int32).view(-1, 2) for t in longs]
    parts.append(feats.contiguous().view(torch.int32))
    width = 2 * len(longs) + feats.shape[1]
    if width % 2:
        parts.append(feats.new_zeros(feats.shape[0], 1, dtype=torch.int32))
    rows = gather_no_grad(torch.cat(parts, dim=1))
    wide = rows.view(torch.int64)  # [N, ceil(width / 2)]: the long columns come first
    got = iter(range(len(longs)))
    out = [None if t is None else wide[:, next(got)].contiguous() for t in (lab, idx)]
    col = 2 * len(longs)
    out_feats = rows[:, col : col + feats.shape[1]].contiguous().view(torch.float32)
    return out_feats, out[0], out[1]


def _as_numpy_f32(x: Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())


def _faiss_gpu_device(faiss: Any, feats: Tensor) -> int | None:
    """The CUDA device to put a faiss index on: that of ``feats`` when they are on a GPU and
    faiss has GPU support (faiss-gpu); else None (CPU index)."""
    if feats.device.type != "cuda" or not hasattr(faiss, "StandardGpuResources"):
        return None
    if faiss.get_num_gpus() < 1:
        return None
    return feats.device.index if feats.device.index is not None else torch.cuda.current_device()


_GPU_RESOURCES: dict[int, Any] = {}


def _faiss_gpu_resources(faiss: Any, device: int) -> Any:
    """One ``faiss.StandardGpuResources`` per CUDA device (scratch memory, streams)."""
    if device not in _GPU_RESOURCES:
        _GPU_RESOURCES[device] = faiss.StandardGpuResources()
    return _GPU_RESOURCES[device]


class MemoryBank(nn.Module):
    """Fixed-size FIFO ring buffer of feature vectors with top-k inner-product search.

    Args:
        size: Number of rows ``K`` (> 0).
        dim: Feature dimension ``d`` (> 0).
        backend: ``"torch"`` (exact, chunked matmul + top-k, any device), ``"faiss-flat"``
            (exact, faiss brute force), ``"faiss-ivf"`` or ``"faiss-hnsw"`` (approximate).
            With the buffers on a GPU and faiss-gpu installed, ``"faiss-flat"`` and
            ``"faiss-ivf"`` search there; otherwise faiss indexes live on the CPU and rows on a
            GPU are copied to the host for them (``"torch"`` is exact on any device).
        gather_distributed: Under DDP, :meth:`add` enqueues the batch gathered from all ranks
            (rank order), so every rank holds identical contents.
        store_labels: Keep a ``[size]`` long buffer of labels (``-1`` = unknown).
        store_indices: Keep a ``[size]`` long buffer of sample ids (``-1`` = unknown); needed
            by ``exclude_indices`` in :meth:`search`.
        nlist: IVF: number of coarse cells; ``None`` (default): ``4·sqrt(filled)`` rounded to a
            power of two, the low end of faiss's guideline ``4·sqrt(N)``–``16·sqrt(N)`` (1024
            at 65k rows, 4096 at 1M). Capped at ``filled // 39`` (faiss wants >= 39 training
            points per cell) while the bank is small.
        nprobe: IVF: cells visited per query.
        hnsw_m: HNSW: graph degree ``M``.
        ef_construction: HNSW: beam width while building.
        ef_search: HNSW: beam width while searching (raised to ``k`` when smaller).
        retrain_every: IVF: re-train the centroids after this many added rows
            (default ``size``); ``0`` disables periodic re-training.
        train_points_per_list: IVF: k-means sample size per cell (at most ``filled`` rows;
            below 39 faiss warns).
        train_iters: IVF: k-means iterations.
        seed: Seed of the IVF training subsample.

    Buffers (all in ``state_dict``): ``_features [size, dim]`` float32 (zeros until written),
    ``_labels [size]`` / ``_indices [size]`` long filled with ``-1`` (only when stored),
    ``_ptr`` (next row to write) and ``_filled`` (rows written so far, at most ``size``).
    Rows ``[:filled]`` are exactly the filled rows, in storage (not chronological) order.
    :meth:`add`, :meth:`reset` and ``load_state_dict`` keep host copies of ``_ptr`` and
    ``_filled`` (what :attr:`ptr` and ``len(bank)`` return); write the buffers only through
    them.

    Example:
        >>> bank = MemoryBank(4096, 128)
        >>> bank.add(torch.nn.functional.normalize(torch.randn(256, 128), dim=1))
        >>> scores, pos = bank.search(torch.randn(8, 128), k=5)
        >>> neighbours = bank.features[pos]  # [8, 5, 128]
    """

    _features: Tensor
    _labels: Tensor | None
    _indices: Tensor | None
    _ptr: Tensor
    _filled: Tensor

    def __init__(
        self,
        size: int,
        dim: int,
        *,
        backend: str = "torch",
        gather_distributed: bool = True,
        store_labels: bool = True,
        store_indices: bool = True,
        nlist: int | None = None,
        nprobe: int = 16,
        hnsw_m: int = 16,
        ef_construction: int = 40,
        ef_search: int = 128,
        retrain_every: int | None = None,
        train_points_per_list: int = 40,
        train_iters: int = 10,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if nlist is not None:
            if isinstance(nlist, bool) or not isinstance(nlist, int):
                raise ValueError(f"`nlist` must be an int or None, got {type(nlist).__name__}")
            check_positive("nlist", nlist)
        for name, value in (("size", size), ("dim", dim), ("nprobe", nprobe),
                            ("hnsw_m", hnsw_m), ("ef_construction", ef_construction),
                            ("ef_search", ef_search),
                            ("train_points_per_list", train_points_per_list),
                            ("train_iters", train_iters)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"`{name}` must be an int, got {type(value).__name__}")
            check_positive(name, value)
        if backend not in BACKENDS:
            raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}")
        if retrain_every is not None:
            check_positive("retrain_every", retrain_every, allow_zero=True)
        self._size = int(size)
        self._dim = int(dim)
        self.backend = backend
        self.gather_distributed = gather_distributed
        self.store_labels = store_labels
        self.store_indices = store_indices
        self.nlist = nlist
        self.nprobe = nprobe
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.retrain_every = size if retrain_every is None else int(retrain_every)
        self.train_points_per_list = train_points_per_list
        self.train_iters = train_iters
        self.seed = seed
        self.register_buffer("_features", torch.zeros(size, dim, dtype=torch.float32))
        self.register_buffer(
            "_labels", torch.full((size,), -1, dtype=torch.long) if store_labels else None
        )
        self.register_buffer(
            "_indices", torch.full((size,), -1, dtype=torch.long) if store_indices else None
        )
        self.register_buffer("_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("_filled", torch.zeros((), dtype=torch.long))
        # host copies of _ptr / _filled: reading the buffers on a GPU would synchronise
        self._ptr_host = 0
        self._filled_host = 0
        self._index: _FaissIndex | None = None
        if backend in ("faiss-ivf", "faiss-hnsw"):
            self._index = self._new_index()

    # ------------------------------------------------------------------ properties
    @property
    def size(self) -> int:
        """Capacity ``K`` (rows)."""
        return self._size

    @property
    def dim(self) -> int:
        """Feature dimension ``d``."""
        return self._dim

    @property
    def ptr(self) -> int:
        """Row the next :meth:`add` writes first (a host copy of ``_ptr``: no device read)."""
        return self._ptr_host

    def __len__(self) -> int:
        """Rows written so far, at most ``size`` (a host copy of ``_filled``)."""
        return self._filled_host

    def _set_counters(self, ptr: int, filled: int) -> None:
        """Set ``_ptr``/``_filled`` and their host copies (``fill_`` with a Python int: an
        asynchronous kernel on a GPU)."""
        self._ptr_host, self._filled_host = int(ptr), int(filled)
        self._ptr.fill_(self._ptr_host)
        self._filled.fill_(self._filled_host)

    @property
    def features(self) -> Tensor:
        """``[filled, d]`` stored features, storage order (a view: do not modify)."""
        return self._features[: len(self)]

    @property
    def labels(self) -> Tensor | None:
        """``[filled]`` labels (``-1`` where none was given), or ``None`` if not stored."""
        return None if self._labels is None else self._labels[: len(self)]

    @property
    def indices(self) -> Tensor | None:
        """``[filled]`` sample ids (``-1`` where none was given), or ``None`` if not stored."""
        return None if self._indices is None else self._indices[: len(self)]

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, backend={self.backend!r}, filled={len(self)}"

    # ------------------------------------------------------------------ writing
    @torch.no_grad()
    def add(
        self, features: Tensor, labels: Tensor | None = None, indices: Tensor | None = None
    ) -> None:
        """Enqueue rows, overwriting the oldest ones (FIFO) once the bank is full.

        Any batch size works: a batch larger than the free space wraps around to row 0; a batch
        larger than ``size`` keeps its last ``size`` rows (as if added one row at a time).
        Under DDP (``gather_distributed`` and a process group of > 1 ranks) the batch of every
        rank is gathered (rank order) and added on every rank; all ranks must call ``add``
        together (collective), with or without labels alike.

        Args:
            features: ``[n, d]`` rows to add (detached, stored as float32).
            labels: Optional ``[n]`` integer labels (ignored when ``store_labels=False``).
            indices: Optional ``[n]`` integer sample ids (ignored when
                ``store_indices=False``).

        Raises:
            ValueError: wrong shape / dtype, NaN or inf, mismatched lengths.
        """
        check_tensor("features", features, ndim=2, dim=self.dim, floating=True)
        for name, t in (("labels", labels), ("indices", indices)):
            if t is not None:
                check_tensor(name, t, ndim=1)
                if t.is_floating_point() or t.is_complex():
                    raise ValueError(f"`{name}` must be an integer tensor, got {t.dtype}")
        check_same_length(features=features, labels=labels, indices=indices)
        dev = self._features.device
        feats = _to_bank(features, dev, torch.float32)
        n = feats.shape[0]
        lab = idx = None
        if self._labels is not None:
            lab = (
                torch.full((n,), -1, dtype=torch.long, device=dev)
                if labels is None
                else _to_bank(labels, dev, torch.long)
            )
        if self._indices is not None:
            idx = (
                torch.full((n,), -1, dtype=torch.long, device=dev)
                if indices is None
                else _to_bank(indices, dev, torch.long)
            )
        if self.gather_distributed and is_distributed():
            # Under DDP only: one exchange of the ranks' batch sizes, a host read every step.
            # Kept: ranks may enqueue different numbers of rows (any batch size), and the ring's
            # pointer and fill count live on the host (so that nothing else here reads back).
            feats, lab, idx = _gather_rows(feats, lab, idx)
            n = feats.shape[0]
        if n == 0:
            return
        ptr = self.ptr
        if n > self.size:  # keep the last `size` rows, as if written one by one
            start = (ptr + n - self.size) % self.size
            feats = feats[-self.size :]
            lab = None if lab is None else lab[-self.size :]
            idx = None if idx is None else idx[-self.size :]
            n = self.size
        else:
            start = ptr
        slots = self._write(start, feats, lab, idx)
        was_filled = len(self)
        self._set_counters((start + n) % self.size, min(self.size, was_filled + n))
        if self._index is not None:
            self._index.on_add(self, slots, feats, n_old_filled=was_filled)

    def _write(self, start: int, feats: Tensor, lab: Tensor | None, idx: Tensor | None) -> Tensor:
        """Write ``n <= size`` rows from ``start`` with wrap-around; return their slots."""
        n = feats.shape[0]
        first = min(n, self.size - start)
        rest = n - first
        for buf, src in ((self._features, feats), (self._labels, lab), (self._indices, idx)):
            if buf is None or src is None:
                continue
            buf[start : start + first] = src[:first]
            if rest:
                buf[:rest] = src[first:]
        return (torch.arange(n, dtype=torch.long) + start) % self.size

    @torch.no_grad()
    def reset(self) -> None:
        """Empty the bank (buffers back to their initial values, index dropped)."""
        self._features.zero_()
        if self._labels is not None:
            self._labels.fill_(-1)
        if self._indices is not None:
            self._indices.fill_(-1)
        self._set_counters(0, 0)
        if self._index is not None:
            self._index = self._new_index()

    # ------------------------------------------------------------------ search
    @torch.no_grad()
    def search(
        self, queries: Tensor, k: int, exclude_indices: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Top-``k`` inner-product neighbours of each query among the filled rows.

        ``k`` is clamped to the number of filled rows (``k > len(bank)`` is not an error).
        Rows whose stored sample id equals the query's entry of ``exclude_indices`` are
        skipped (same instance, not a neighbour); when a query has fewer than ``k`` eligible
        rows, its trailing entries are ``score = -inf``, ``position = -1``.

        Args:
            queries: ``[B, d]`` query vectors (not modified; any float dtype).
            k: Number of neighbours (> 0).
            exclude_indices: Optional ``[B]`` sample ids, one per query (needs
                ``store_indices=True``).

        Returns:
            ``scores [B, k']`` float32, sorted descending, and ``positions [B, k']`` long
            (rows of :attr:`features`, so ``bank.features[positions]`` are the neighbours),
            with ``k' = min(k, len(bank))``, on the bank's device. Approximate backends may
            return lower-ranked rows (their recall is < 1).

        Raises:
            ValueError: wrong shape, NaN/inf, non-positive ``k``, mismatched lengths, or
                ``exclude_indices`` without stored indices.
        """
        check_tensor("queries", queries, ndim=2, dim=self.dim, floating=True)
        if isinstance(k, bool) or not isinstance(k, int):
            raise ValueError(f"`k` must be an int, got {type(k).__name__}")
        check_positive("k", k)
        if exclude_indices is not None:
            check_tensor("exclude_indices", exclude_indices, ndim=1)
            check_same_length(queries=queries, exclude_indices=exclude_indices)
            if self._indices is None:
                raise ValueError(
                    "`exclude_indices` needs a bank built with store_indices=True"
                )
        dev = self._features.device
        n_filled = len(self)
        k = min(k, n_filled)
        b = queries.shape[0]
        if k == 0 or b == 0:
            return (
                torch.empty(b, k, dtype=torch.float32, device=dev),
                torch.empty(b, k, dtype=torch.long, device=dev),
            )
        q = queries.detach().to(dev, torch.float32)
        excl = None if exclude_indices is None else exclude_indices.detach().to(dev, torch.long)
        if self.backend == "torch":
            return self._search_torch(q, k, excl)
        return self._search_faiss(q, k, excl)

    def _search_torch(self, q: Tensor, k: int, excl: Tensor | None) -> tuple[Tensor, Tensor]:
        n_filled = len(self)
        feats = self._features[:n_filled].to(torch.float32)
        ids = None if excl is None or self._indices is None else self._indices[:n_filled]
        chunk = max(k, _CHUNK_ELEMENTS // max(1, q.shape[0]))
        best_s: Tensor | None = None
        best_p: Tensor | None = None
        with torch.autocast(device_type=q.device.type, enabled=False):
            for lo in range(0, n_filled, chunk):
                hi = min(n_filled, lo + chunk)
                s = q @ feats[lo:hi].T
                if ids is not None and excl is not None:
                    s.masked_fill_(ids[lo:hi].unsqueeze(0) == excl.unsqueeze(1), -math.inf)
                kk = min(k, hi - lo)
                cs, cp = torch.topk(s, kk, dim=1)
                cp = cp + lo
                if best_s is None or best_p is None:
                    best_s, best_p = cs, cp
                else:
                    cat_s = torch.cat([best_s, cs], dim=1)
                    cat_p = torch.cat([best_p, cp], dim=1)
                    best_s, sel = torch.topk(cat_s, k, dim=1)
                    best_p = cat_p.gather(1, sel)
        assert best_s is not None and best_p is not None
        best_p = best_p.masked_fill(torch.isneginf(best_s), -1)
        return best_s, best_p

    def _search_faiss(self, q: Tensor, k: int, excl: Tensor | None) -> tuple[Tensor, Tensor]:
        """faiss search; over-fetch (doubling) until every query has k valid hits: not
        excluded, and not hidden by the index (position ``-1``: a stale row of an append-only
        IVF index, a deleted HNSW node, a missing hit)."""
        dev = self._features.device
        n_filled = len(self)
        qn = _as_numpy_f32(q)
        ids_np = None
        excl_np = None
        if excl is not None and self._indices is not None:
            ids_np = self._indices[:n_filled].cpu().numpy()
            excl_np = excl.cpu().numpy()
        b = qn.shape[0]
        out_s = np.full((b, k), -np.inf, dtype=np.float32)
        out_p = np.full((b, k), -1, dtype=np.int64)
        todo = np.arange(b)
        fetch = k if excl_np is None else min(n_filled, k + 4)
        while todo.size:
            s, p = self._faiss_raw_search(qn[todo], fetch)
            valid = p >= 0
            if ids_np is not None and excl_np is not None:
                valid &= ids_np[np.clip(p, 0, None)] != excl_np[todo][:, None]
            depth = n_filled if self._index is None else self._index.depth(self)
            exhausted = fetch >= depth
            done = (valid.sum(axis=1) >= k) | exhausted
            # per row: its valid hits first (rank order kept), then padding
            order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
            s_k = np.take_along_axis(s, order, axis=1)
            p_k = np.take_along_axis(p, order, axis=1)
            ok = np.take_along_axis(valid, order, axis=1)
            rows = todo[done]
            width = s_k.shape[1]
            out_s[rows, :width] = np.where(ok[done], s_k[done], -np.inf)
            out_p[rows, :width] = np.where(ok[done], p_k[done], -1)
            todo = todo[~done]
            fetch = min(depth, fetch * 2)
        return (
            torch.from_numpy(out_s).to(dev),
            torch.from_numpy(out_p).to(dev),
        )

    def _faiss_raw_search(self, qn: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw faiss top-k over filled rows: (scores, slots with -1 for missing)."""
        faiss = _import_faiss()
        n_filled = len(self)
        if self.backend == "faiss-flat":
            xb = self._features[:n_filled]
            gpu = _faiss_gpu_device(faiss, xb)
            if gpu is not None:  # brute force on the GPU, the bank's rows stay there
                import faiss.contrib.torch_utils  # noqa: F401  (torch tensors in knn_gpu)

                xq = torch.from_numpy(qn).to(xb.device)
                s_t, p_t = faiss.knn_gpu(_faiss_gpu_resources(faiss, gpu), xq, xb.contiguous(),
                                         k, metric=faiss.METRIC_INNER_PRODUCT, device=gpu)
                return s_t.cpu().numpy(), p_t.cpu().numpy()
            xb_np = xb.numpy() if xb.device.type == "cpu" else _as_numpy_f32(xb)
            s, p = faiss.knn(qn, np.ascontiguousarray(xb_np), k, metric=faiss.METRIC_INNER_PRODUCT)
            return s, p
        assert self._index is not None
        return self._index.search(self, qn, k)

    # ------------------------------------------------------------------ approximate index
    def _new_index(self) -> _FaissIndex:
        if self.backend == "faiss-ivf":
            return _IVFIndex()
        return _HNSWIndex()

    def rebuild_index(self) -> None:
        """Rebuild the approximate index from the buffers (no-op for exact backends)."""
        if self._index is not None:
            self._index = self._new_index()
            self._index.rebuild(self)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        feats = state_dict.get(prefix + "_features")
        if feats is not None and tuple(feats.shape) != (self.size, self.dim):
            raise ValueError(
                f"MemoryBank state has features of shape {tuple(feats.shape)} (size, dim) but "
                f"this bank has size={self.size}, dim={self.dim}"
            )
        for name in ("_labels", "_indices"):
            t = state_dict.get(prefix + name)
            if t is not None and getattr(self, name) is not None and t.shape != (self.size,):
                raise ValueError(
                    f"MemoryBank state has `{name}` of shape {tuple(t.shape)}, expected "
                    f"({self.size},)"
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        filled = state_dict.get(prefix + "_filled")
        ptr = state_dict.get(prefix + "_ptr")
        if filled is not None and not 0 <= int(filled) <= self.size:
            raise ValueError(f"MemoryBank state has `_filled`={int(filled)} > size={self.size}")
        if ptr is not None and not 0 <= int(ptr) < self.size:
            raise ValueError(f"MemoryBank state has `_ptr`={int(ptr)} outside [0, {self.size})")
        # the buffers now hold the loaded values: refresh the host copies (one read, at load)
        self._ptr_host, self._filled_host = int(self._ptr), int(self._filled)
        self.rebuild_index()


class _FaissIndex:
    """Approximate index kept in sync with a :class:`MemoryBank` (internal)."""

    def on_add(self, bank: MemoryBank, slots: Tensor, feats: Tensor, n_old_filled: int) -> None:
        raise NotImplementedError

    def search(self, bank: MemoryBank, qn: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, slots)`` of the top ``k`` entries, ``-1`` for hidden or missing ones."""
        raise NotImplementedError

    def rebuild(self, bank: MemoryBank) -> None:
        raise NotImplementedError

    def depth(self, bank: MemoryBank) -> int:
        """The most entries one search can return (the caller searches no deeper)."""
        return len(bank)


class _IVFIndex(_FaissIndex):
    """IVF-Flat keyed by slot, (re-)trained lazily.

    On the CPU, overwritten rows are removed (hashtable direct map + ``remove_ids``). faiss's
    GPU indexes cannot remove, so a bank on a GPU with faiss-gpu installed keeps an
    append-only index there: each write of a slot gets a new id ``generation * size + slot``;
    hits whose id is not their slot's current one (stale, overwritten rows) come back as
    ``-1``, so :meth:`MemoryBank._search_faiss` searches deeper as it does for excluded ids
    (down to :meth:`depth`; at the GPU's k cap the index is rebuilt without its stale rows),
    and the index is rebuilt once it holds ``size`` stale rows (once per turn of the ring,
    like HNSW).
    """

    # Tests set this to run the append-only (GPU) bookkeeping with a CPU index.
    append_only_on_cpu = False
    # faiss-gpu's largest k per search
    gpu_max_k = 2048

    def __init__(self) -> None:
        self.index: Any = None
        self.trained_at_filled = 0
        self.added_since_train = 0
        self.append_only = False
        self.on_gpu = False
        self.generation: np.ndarray | None = None  # [size] writes of each slot (append-only)
        self.n_stale = 0

    def _needs_train(self, bank: MemoryBank) -> bool:
        n = len(bank)
        if self.index is None:
            return n > 0
        if n > self.trained_at_filled and (n >= 2 * self.trained_at_filled or n == bank.size):
            return True  # bank has doubled, or become full, since the last training
        return bank.retrain_every > 0 and self.added_since_train >= bank.retrain_every

    def _ids(self, bank: MemoryBank, slots: np.ndarray) -> np.ndarray:
        assert self.generation is not None
        return self.generation[slots] * bank.size + slots

    def rebuild(self, bank: MemoryBank) -> None:
        faiss = _import_faiss()
        n = len(bank)
        self.index = None
        self.added_since_train = 0
        self.trained_at_filled = n
        self.n_stale = 0
        if n == 0:
            return
        nlist = max(1, min(bank.nlist or auto_nlist(n), n // 39))
        quantizer = faiss.IndexFlatIP(bank.dim)
        index = faiss.IndexIVFFlat(quantizer, bank.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.own_fields = True
        quantizer.this.disown()
        feats = bank._features[:n]
        index.cp.niter = bank.train_iters
        index.cp.seed = bank.seed
        max_train = bank.train_points_per_list * nlist
        if n > max_train:
            g = torch.Generator().manual_seed(bank.seed)
            sel = torch.randperm(n, generator=g)[:max_train].to(feats.device)
            train = feats[sel]
        else:
            train = feats
        index.train(_as_numpy_f32(train))
        gpu = _faiss_gpu_device(faiss, feats)
        self.on_gpu = gpu is not None
        self.append_only = self.on_gpu or self.append_only_on_cpu
        slots = np.arange(n, dtype=np.int64)
        if self.append_only:
            if self.generation is None or self.generation.size != bank.size:
                self.generation = np.zeros(bank.size, dtype=np.int64)
            index.add_with_ids(_as_numpy_f32(feats), self._ids(bank, slots))
        else:
            index.set_direct_map_type(faiss.DirectMap.Hashtable)
            index.add_with_ids(_as_numpy_f32(feats), slots)
        index.nprobe = min(bank.nprobe, nlist)
        if gpu is not None:
            index = faiss.index_cpu_to_gpu(_faiss_gpu_resources(faiss, gpu), gpu, index)
        self.index = index

    def on_add(self, bank: MemoryBank, slots: Tensor, feats: Tensor, n_old_filled: int) -> None:
        self.added_since_train += int(slots.numel())
        if self.index is None:
            return  # trained lazily at the next search
        slots_np = slots.cpu().numpy().astype(np.int64)
        if self.append_only:
            # every filled slot has one live entry: overwriting it leaves that entry stale
            self.n_stale += int((slots_np < n_old_filled).sum())
            assert self.generation is not None
            self.generation[slots_np] += 1
            if self.n_stale >= bank.size:
                self.index = None  # rebuilt at the next search
                return
            self.index.add_with_ids(_as_numpy_f32(feats), self._ids(bank, slots_np))
            return
        faiss = _import_faiss()
        old = slots_np[slots_np < n_old_filled]
        if old.size:
            self.index.remove_ids(faiss.IDSelectorArray(old.size, faiss.swig_ptr(old)))
        self.index.add_with_ids(_as_numpy_f32(feats), slots_np)

    def depth(self, bank: MemoryBank) -> int:
        if not self.append_only or self.index is None:
            return len(bank)
        total = int(self.index.ntotal)  # live and stale entries
        return min(total, self.gpu_max_k) if self.on_gpu else total

    def search(self, bank: MemoryBank, qn: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._needs_train(bank):
            self.rebuild(bank)
        if not self.append_only:
            return self.index.search(qn, k)
        if self.on_gpu and self.n_stale and k >= self.depth(bank):
            # the caller needs the deepest search a GPU allows: drop the stale rows first
            self.rebuild(bank)
        s, ids = self.index.search(qn, min(k, self.depth(bank)))
        assert self.generation is not None
        slot = np.where(ids >= 0, ids % bank.size, 0)
        live = (ids >= 0) & (self.generation[slot] == ids // bank.size)
        return s, np.where(live, slot, -1)  # stale hits hidden: the caller searches deeper


class _HNSWIndex(_FaissIndex):
    """HNSW with lazy deletion: overwritten rows are hidden by a bitmap; periodic rebuild."""

    def __init__(self) -> None:
        self.index: Any = None
        self.slot_of_node = np.zeros(0, dtype=np.int64)  # faiss node id -> slot (-1: stale)
        self.node_of_slot: np.ndarray | None = None  # slot -> current node id (-1: none)
        self.n_stale = 0

    def rebuild(self, bank: MemoryBank) -> None:
        faiss = _import_faiss()
        n = len(bank)
        index = faiss.IndexHNSWFlat(bank.dim, bank.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = bank.ef_construction
        if n:
            index.add(_as_numpy_f32(bank._features[:n]))
        self.index = index
        self.slot_of_node = np.arange(n, dtype=np.int64)
        self.node_of_slot = np.full(bank.size, -1, dtype=np.int64)
        self.node_of_slot[:n] = np.arange(n)
        self.n_stale = 0

    def on_add(self, bank: MemoryBank, slots: Tensor, feats: Tensor, n_old_filled: int) -> None:
        if self.index is None:
            return  # built lazily at the next search
        assert self.node_of_slot is not None
        slots_np = slots.numpy().astype(np.int64)
        old_nodes = self.node_of_slot[slots_np]
        old_nodes = old_nodes[old_nodes >= 0]
        self.slot_of_node[old_nodes] = -1
        self.n_stale += int(old_nodes.size)
        if self.n_stale >= bank.size:
            self.index = None  # rebuilt at the next search: cheaper than searching stale nodes
            return
        start = int(self.index.ntotal)
        self.index.add(_as_numpy_f32(feats))
        end = start + slots_np.size
        if end > self.slot_of_node.size:  # grow geometrically (amortised O(1) per row)
            grown = np.full(max(end, 2 * self.slot_of_node.size), -1, dtype=np.int64)
            grown[:start] = self.slot_of_node[:start]
            self.slot_of_node = grown
        self.slot_of_node[start:end] = slots_np
        self.node_of_slot[slots_np] = np.arange(start, end)

    def search(self, bank: MemoryBank, qn: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = _import_faiss()
        if self.index is None:
            self.rebuild(bank)
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(bank.ef_search, k)
        bitmap = None
        if self.n_stale:
            live = self.slot_of_node[: self.index.ntotal] >= 0
            bitmap = np.packbits(live, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(int(bitmap.size), faiss.swig_ptr(bitmap))
        s, nodes = self.index.search(qn, k, params=params)
        del bitmap  # kept alive until the search returned
        p = np.where(nodes >= 0, self.slot_of_node[np.clip(nodes, 0, None)], -1)
        return s, p
