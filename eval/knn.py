"""Weighted k-nearest-neighbour classifier on frozen features (docs/methods.md §9).

Wu, Xiong, Yu & Lin, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", CVPR 2018 (the kNN monitor later used by MoCo, SimCLR and others).

For a query ``q`` and a bank ``f_1..f_N`` with labels ``y_j`` (both L2-normalised *here*):
``s_j = q · f_j``, keep the ``k`` largest ``s_j`` (``k`` clamped to ``N``), weight each by
``exp(s_j / tau)`` and score class ``c`` by the sum of the weights of the neighbours labelled
``c``; the prediction is the arg-max. Defaults ``k = 200``, ``tau = 0.1`` (``k = 20``,
``tau = 0.07`` is the other common choice — pass it explicitly).

Determinism:

* **Neighbour ties at the cut-off.** When several bank rows share the ``k``-th largest
  similarity exactly, the rows with the *lower bank index* are kept. Rows where the cut is
  ambiguous are detected (count of values equal to the ``k``-th value) and re-selected with a
  stable sort; all other rows use ``topk``.
* **Class-score ties** go to the *lowest class index* (``torch.argmax`` returns the first
  maximum).
* :func:`knn_scores` returns the class scores divided by their row sum (a distribution over
  classes, same arg-max). Internally the weights are ``exp((s_j - s_max) / tau)``, which is the
  same ratio but cannot overflow, so ``tau -> 0`` (1-NN) and ``tau -> inf`` (majority vote)
  are both exact limits.

Back-ends: ``"torch"`` (the reference: exact matmul + ``topk`` on the features' device, GPUs
included, chunked over query rows so peak memory is ``chunk_size x N`` similarities),
``"bf16"`` (CPU, float32, needs the optional numba accelerator, ``pip install
contrastmix[cpu]``: a bf16 screening product on the CPU's bf16 matrix units, then an exact
fp32 re-ranking of the rows that can still be neighbours — the same neighbours as
``"torch"``, see :mod:`contrastmix.eval._knn_rescore`), ``"faiss"`` (``IndexFlatIP``, exact
inner product on CPU, for large banks) and ``"auto"`` (``"bf16"`` for float32 CPU problems of
at least ``BF16_MIN_WORK`` similarities when the CPU has bf16 instructions and numba is
installed and enabled, faiss for CPU banks with at least ``faiss_min_bank`` rows when faiss
is importable, torch otherwise).
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastmix._numerics import unit_rows
from contrastmix._validation import (
    check_features,
    check_positive,
    check_same_length,
    check_tensor,
)
from contrastmix.eval._knn_rescore import bf16_matmul_available, rescored_topk

__all__ = ["knn_scores", "knn_predict", "knn_accuracy", "FAISS_MIN_BANK", "BF16_MIN_WORK"]

#: Bank size from which ``backend="auto"`` uses faiss on CPU. Measured on a 2-core CPU,
#: faiss-cpu's ``IndexFlatIP`` was 2x (50k x 512 bank) and 4.5x (400k x 128) slower than the
#: torch path, so faiss is only used once the torch path's query chunks get small
#: (``2**25 // N <= 16`` rows; not measured at that size).
FAISS_MIN_BANK = 2_000_000

#: ``N x M`` from which ``backend="auto"`` uses the bf16-screened path on a CPU with bf16
#: instructions (below it the fixed costs dominate).
BF16_MIN_WORK = 10_000_000

#: Similarity entries per chunk for the torch back-end (2**25 floats = 128 MiB in float32).
_CHUNK_ELEMENTS = 2**25


def _check_int_labels(name: str, y: object, n: int) -> Tensor:
    check_tensor(name, y, ndim=1)
    assert isinstance(y, Tensor)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"`{name}` must be an integer tensor of class indices, got {y.dtype}")
    if y.shape[0] != n:
        raise ValueError(f"length mismatch: `train_x` has {n} rows, `{name}` has {y.shape[0]}")
    if n and int(y.min()) < 0:
        raise ValueError(f"`{name}` must be >= 0, got min {int(y.min())}")
    return y


def _topk_deterministic(sims: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` per row (descending) with ties at the cut-off broken towards lower index.

    One extra neighbour is fetched: the cut is ambiguous only where the ``k``-th and
    ``(k+1)``-th values are equal, and only those rows are re-selected with a stable sort.
    """
    n = sims.shape[1]
    kk = min(k + 1, n)
    vals, idx = sims.topk(kk, dim=1, largest=True, sorted=True)
    if kk > k:
        amb = (vals[:, k - 1] == vals[:, k]).nonzero(as_tuple=True)[0]
        vals, idx = vals[:, :k].clone(), idx[:, :k].clone()
        if amb.numel():
            sv, si = torch.sort(sims[amb], dim=1, descending=True, stable=True)
            vals[amb] = sv[:, :k]
            idx[amb] = si[:, :k]
    return vals, idx


def _neighbours_torch(
    bank: Tensor, queries: Tensor, k: int, chunk_size: int
) -> list[tuple[Tensor, Tensor]]:
    out = []
    # One similarity buffer reused across chunks: a fresh multi-MB allocation per chunk costs
    # page faults comparable to a sizeable part of the matrix product itself.
    buf = torch.empty(min(chunk_size, queries.shape[0]), bank.shape[0], dtype=bank.dtype,
                      device=bank.device)
    for s in range(0, queries.shape[0], chunk_size):
        q = queries[s : s + chunk_size]
        sims = torch.mm(q, bank.T, out=buf[: q.shape[0]])
        out.append(_topk_deterministic(sims, k))
    return out


def _neighbours_faiss(
    bank: Tensor, queries: Tensor, k: int, chunk_size: int
) -> list[tuple[Tensor, Tensor]]:
    import faiss
    import numpy as np

    b = np.ascontiguousarray(bank.detach().to("cpu", torch.float32).numpy())
    index = faiss.IndexFlatIP(b.shape[1])
    index.add(b)
    n = b.shape[0]
    k_search = min(k + 1, n)  # one extra to detect ties at the cut-off
    out = []
    bank32 = bank.detach().to("cpu", torch.float32)
    for s in range(0, queries.shape[0], chunk_size):
        q = queries[s : s + chunk_size].detach().to("cpu", torch.float32)
        dist, ind = index.search(np.ascontiguousarray(q.numpy()), k_search)
        vals = torch.from_numpy(dist[:, :k].copy())
        idx = torch.from_numpy(ind[:, :k].astype(np.int64))
        if k_search > k:
            amb = torch.from_numpy(dist[:, k - 1] == dist[:, k]).nonzero(as_tuple=True)[0]
            if amb.numel():  # exact re-selection in torch for ambiguous rows
                v2, i2 = _topk_deterministic(q[amb] @ bank32.T, k)
                vals[amb] = v2
                idx[amb] = i2
        out.append((vals.to(queries.device), idx.to(queries.device)))
    return out


def knn_scores(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    k: int = 200,
    temperature: float = 0.1,
    *,
    num_classes: int | None = None,
    backend: str = "auto",
    chunk_size: int | None = None,
    faiss_min_bank: int = FAISS_MIN_BANK,
) -> Tensor:
    """Weighted-kNN class scores, normalised per row (see module docstring).

    Args:
        train_x: ``[N, d]`` bank features (backbone features, not the projector; normalised
            here).
        train_y: ``[N]`` integer labels ``>= 0``.
        test_x: ``[M, d]`` query features.
        k: number of neighbours ``>= 1``; clamped to ``N``.
        temperature: ``tau > 0`` of the weights ``exp(s / tau)``.
        num_classes: number of classes ``C`` (default ``max(train_y) + 1``).
        backend: ``"auto"``, ``"torch"``, ``"bf16"`` or ``"faiss"``.
        chunk_size: query rows per chunk (default: ``2**25 // N`` rows, at least 1).
        faiss_min_bank: bank size from which ``"auto"`` picks faiss on CPU.

    Returns:
        ``[M, C]`` float32 (float64 for float64 inputs) scores; each row sums to 1 and is
        proportional to ``sum_{j in top-k, y_j = c} exp(s_j / tau)``.
    """
    check_features("train_x", train_x)
    check_features("test_x", test_x, dim=train_x.shape[1])
    n = train_x.shape[0]
    train_y = _check_int_labels("train_y", train_y, n)
    check_same_length(train_x=train_x, train_y=train_y)
    if n == 0:
        raise ValueError("`train_x` is empty: kNN needs a non-empty bank")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"`k` must be an int >= 1, got {k!r}")
    check_positive("temperature", temperature)
    if backend not in ("auto", "torch", "faiss", "bf16"):
        raise ValueError(
            f"`backend` must be 'auto', 'torch', 'bf16' or 'faiss', got {backend!r}"
        )
    max_label = int(train_y.max())
    if num_classes is None:
        num_classes = max_label + 1
    elif num_classes <= max_label:
        raise ValueError(f"`num_classes`={num_classes} but `train_y` contains label {max_label}")
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // n)
    check_positive("chunk_size", chunk_size)
    k = min(k, n)

    dtype = torch.promote_types(torch.promote_types(train_x.dtype, test_x.dtype), torch.float32)
    device = train_x.device
    bf16_ok = device.type == "cpu" and dtype == torch.float32 and bf16_matmul_available()
    if backend == "bf16" and not bf16_ok:
        raise ValueError(
            "backend 'bf16' needs float32 CPU features and a CPU with AVX512-BF16/AMX-BF16 "
            "and the optional numba accelerator (`pip install contrastmix[cpu]`, not "
            "disabled by CONTRASTMIX_NUMBA=0); use backend='torch'"
        )
    if backend == "auto" and bf16_ok and n * test_x.shape[0] >= BF16_MIN_WORK and n > k:
        backend = "bf16"
    if backend == "auto":
        use_faiss = device.type == "cpu" and n >= faiss_min_bank
        if use_faiss:
            try:
                import faiss  # noqa: F401
            except ImportError:
                use_faiss = False
        backend = "faiss" if use_faiss else "torch"

    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
        bank = unit_rows(train_x.detach().to(dtype), dim=1)
        queries = unit_rows(test_x.detach().to(device=device, dtype=dtype), dim=1)
        labels = train_y.to(device)
        if backend == "faiss":
            parts = _neighbours_faiss(bank, queries, k, chunk_size)
        elif backend == "bf16":
            parts = rescored_topk(bank, queries, k, chunk_size)
        else:
            parts = _neighbours_torch(bank, queries, k, chunk_size)
        scores = []
        for vals, idx in parts:
            vals = vals.to(dtype)
            weights = torch.exp((vals - vals[:, :1]) / temperature)  # s_max is column 0
            sc = torch.zeros(vals.shape[0], num_classes, dtype=dtype, device=device)
            sc.scatter_add_(1, labels[idx], weights)
            scores.append(sc / sc.sum(dim=1, keepdim=True))
        if not scores:
            return torch.zeros(0, num_classes, dtype=dtype, device=device)
        return torch.cat(scores)


def knn_predict(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    k: int = 200,
    temperature: float = 0.1,
    *,
    num_classes: int | None = None,
    backend: str = "auto",
    chunk_size: int | None = None,
    faiss_min_bank: int = FAISS_MIN_BANK,
) -> Tensor:
    """Weighted-kNN predictions (docs/methods.md §9); arguments as :func:`knn_scores`.

    Returns:
        ``[M]`` int64 predicted labels (class-score ties -> lowest class index).
    """
    scores = knn_scores(
        train_x,
        train_y,
        test_x,
        k,
        temperature,
        num_classes=num_classes,
        backend=backend,
        chunk_size=chunk_size,
        faiss_min_bank=faiss_min_bank,
    )
    return scores.argmax(dim=1)


def knn_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    k: int = 200,
    temperature: float = 0.1,
    *,
    num_classes: int | None = None,
    backend: str = "auto",
    chunk_size: int | None = None,
) -> float:
    """Top-1 accuracy of :func:`knn_predict` on ``(test_x, test_y)``, in ``[0, 1]``."""
    check_tensor("test_y", test_y, ndim=1)
    check_same_length(test_x=test_x, test_y=test_y)
    if test_y.shape[0] == 0:
        raise ValueError("`test_y` is empty")
    pred = knn_predict(
        train_x,
        train_y,
        test_x,
        k,
        temperature,
        num_classes=num_classes,
        backend=backend,
        chunk_size=chunk_size,
    )
    return float((pred == test_y.to(pred.device)).to(torch.float64).mean())
