"""Tests of contrastmix.banks.memory_bank.MemoryBank (docs/methods.md §1 "Base", §9)."""

from __future__ import annotations

import math

import faiss
import pytest
import torch
import torch.nn.functional as F

from contrastmix.banks.memory_bank import MemoryBank, auto_nlist

faiss.omp_set_num_threads(1)

EXACT = ["torch", "faiss-flat"]
APPROX = ["faiss-ivf", "faiss-hnsw"]
ALL = EXACT + APPROX


def _unit(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=g), dim=1)


class _RefRing:
    """Reference FIFO: writes rows one at a time, explicit loop."""

    def __init__(self, size: int, dim: int) -> None:
        self.size = size
        self.feats = torch.zeros(size, dim)
        self.labels = torch.full((size,), -1, dtype=torch.long)
        self.ids = torch.full((size,), -1, dtype=torch.long)
        self.ptr = 0
        self.filled = 0

    def add(self, x: torch.Tensor, lab: torch.Tensor, ids: torch.Tensor) -> None:
        for i in range(x.shape[0]):
            self.feats[self.ptr] = x[i]
            self.labels[self.ptr] = lab[i]
            self.ids[self.ptr] = ids[i]
            self.ptr = (self.ptr + 1) % self.size
            self.filled = min(self.size, self.filled + 1)


def _brute_topk(bank: MemoryBank, q: torch.Tensor, k: int, excl: torch.Tensor | None):
    """Explicit-loop reference: list of (score, position) per query, sorted descending."""
    out = []
    for b in range(q.shape[0]):
        cands = []
        for r in range(len(bank)):
            if excl is not None and int(bank.indices[r]) == int(excl[b]):
                continue
            cands.append((float(q[b] @ bank.features[r]), r))
        cands.sort(key=lambda t: -t[0])
        out.append(cands[:k])
    return out


@pytest.mark.parametrize("backend", ALL)
def test_fifo_matches_reference_for_any_batch_size(backend: str) -> None:
    g = torch.Generator().manual_seed(0)
    size, dim = 50, 8
    bank = MemoryBank(size, dim, backend=backend)
    ref = _RefRing(size, dim)
    counter = 0
    # includes: partial fill, batch > free space (wrap), batch == size, batch > size (twice)
    for n in [7, 20, 30, 1, 50, 0, 64, 13, 120, 3]:
        x = _unit(n, dim, g)
        lab = torch.randint(0, 5, (n,), generator=g)
        ids = torch.arange(counter, counter + n)
        counter += n
        bank.add(x, labels=lab, indices=ids)
        ref.add(x, lab, ids)
        assert len(bank) == ref.filled
        assert bank.ptr == ref.ptr
        torch.testing.assert_close(bank.features, ref.feats[: ref.filled], rtol=0, atol=0)
        assert torch.equal(bank.labels, ref.labels[: ref.filled])
        assert torch.equal(bank.indices, ref.ids[: ref.filled])
    # last batch of 3 after the 120-row batch: bank holds the last 50 ids in the stream
    assert sorted(bank.indices.tolist()) == list(range(counter - size, counter))


def test_batch_larger_than_size_keeps_last_rows() -> None:
    bank = MemoryBank(4, 2)
    x = torch.arange(20, dtype=torch.float32).reshape(10, 2)
    bank.add(x, indices=torch.arange(10))
    assert len(bank) == 4
    assert bank.ptr == 10 % 4
    got = {int(i): bank.features[r].tolist() for r, i in enumerate(bank.indices)}
    assert got == {i: x[i].tolist() for i in range(6, 10)}
    # the next write overwrites the oldest row (id 6)
    bank.add(torch.zeros(1, 2), indices=torch.tensor([99]))
    assert 6 not in bank.indices.tolist() and 99 in bank.indices.tolist()


def test_add_detaches_and_defaults() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    bank = MemoryBank(5, 4)
    bank.add(x * 2)
    assert not bank.features.requires_grad
    assert bank.labels.tolist() == [-1, -1, -1] and bank.indices.tolist() == [-1, -1, -1]
    assert torch.equal(bank._features[3:], torch.zeros(2, 4))  # zeros, not random
    nolab = MemoryBank(5, 4, store_labels=False, store_indices=False)
    nolab.add(x, labels=torch.arange(3), indices=torch.arange(3))
    assert nolab.labels is None and nolab.indices is None
    assert set(nolab.state_dict()) == {"_features", "_ptr", "_filled"}


@pytest.mark.parametrize("backend", EXACT)
def test_exact_backends_match_brute_force_with_exclusion(backend: str) -> None:
    g = torch.Generator().manual_seed(1)
    bank = MemoryBank(60, 6, backend=backend)
    for n in [25, 25, 25]:  # wraps
        bank.add(_unit(n, 6, g), indices=torch.randint(0, 10, (n,), generator=g))
    q = _unit(5, 6, g)
    excl = torch.tensor([0, 1, 2, 3, 4])
    for ex in (None, excl):
        s, p = bank.search(q, 7, exclude_indices=ex)
        ref = _brute_topk(bank, q, 7, ex)
        assert s.shape == (5, 7) and p.shape == (5, 7)
        for b in range(5):
            torch.testing.assert_close(s[b], torch.tensor([t[0] for t in ref[b]]))
            # neighbours are bank.features[positions]
            torch.testing.assert_close(bank.features[p[b]] @ q[b], s[b])
            if ex is not None:
                assert (bank.indices[p[b]] != ex[b]).all()


@pytest.mark.parametrize("backend", ALL)
def test_k_is_clamped_and_short_rows_are_padded(backend: str) -> None:
    g = torch.Generator().manual_seed(2)
    bank = MemoryBank(10, 4, backend=backend)
    s, p = bank.search(_unit(2, 4, g), 3)
    assert s.shape == (2, 0) and p.shape == (2, 0)  # empty bank
    bank.add(_unit(5, 4, g), indices=torch.tensor([7, 7, 7, 1, 2]))
    s, p = bank.search(_unit(2, 4, g), 100)
    assert s.shape == (2, 5) and sorted(p[0].tolist()) == [0, 1, 2, 3, 4]
    # query 0 excludes id 7 (3 rows) -> only 2 eligible rows, the rest padded
    s, p = bank.search(_unit(2, 4, g), 4, exclude_indices=torch.tensor([7, 5]))
    assert sorted(p[0, :2].tolist()) == [3, 4]
    assert p[0, 2:].tolist() == [-1, -1] and torch.isneginf(s[0, 2:]).all()
    assert (p[1] >= 0).all()


def _clustered(n_clusters: int, per: int, d: int, kappa: float, g: torch.Generator):
    centers = _unit(n_clusters, d, g)
    x = centers.repeat_interleave(per, 0) + torch.randn(n_clusters * per, d, generator=g) / kappa
    return F.normalize(x, dim=1)


@pytest.mark.parametrize(
    "backend,kwargs",
    [
        ("faiss-ivf", {"nlist": 16, "nprobe": 6}),
        ("faiss-hnsw", {"hnsw_m": 16, "ef_search": 64}),
    ],
)
def test_approximate_backends_recall_after_wrap(backend: str, kwargs: dict) -> None:
    g = torch.Generator().manual_seed(3)
    d, size = 32, 1500
    data = _clustered(40, 60, d, kappa=20.0, g=g)  # 2400 rows: the ring wraps
    data = data[torch.randperm(data.shape[0], generator=g)]
    exact = MemoryBank(size, d, backend="torch")
    approx = MemoryBank(size, d, backend=backend, **kwargs)
    for lo in range(0, data.shape[0], 200):
        chunk = data[lo : lo + 200]
        exact.add(chunk)
        approx.add(chunk)
        if lo == 800:
            approx.search(chunk[:1], 1)  # build the index midway: later adds go incrementally
    q = _clustered(40, 2, d, kappa=20.0, g=g)
    k = 10
    _, pe = exact.search(q, k)
    sa, pa = approx.search(q, k)
    assert (pa >= 0).all()
    torch.testing.assert_close((approx.features[pa] * q[:, None]).sum(-1), sa)
    hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(pa, pe, strict=True))
    recall = hits / pe.numel()
    assert recall >= 0.9, recall
    # the index holds exactly the live rows (overwritten rows removed / hidden)
    idx = approx._index
    if backend == "faiss-ivf":
        assert idx.index.ntotal == len(approx)
    else:
        assert int((idx.slot_of_node >= 0).sum()) == len(approx)


@pytest.mark.parametrize("fake_gpu", [False, True])
def test_ivf_append_only_mode_never_returns_overwritten_rows(
    monkeypatch: pytest.MonkeyPatch, fake_gpu: bool
) -> None:
    """The GPU bookkeeping of faiss-ivf (append-only index, stale ids filtered, rebuild), run
    with a CPU index: ``fake_gpu`` also routes through the GPU branch (identity "copy to GPU")
    with a tiny per-search k cap, so the rebuild-when-capped path runs."""
    from contrastmix.banks import memory_bank as mb

    if fake_gpu:
        monkeypatch.setattr(mb, "_faiss_gpu_device", lambda faiss, feats: 0)
        monkeypatch.setattr(mb, "_faiss_gpu_resources", lambda faiss, dev: None)
        monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda res, dev, index: index,
                            raising=False)
        monkeypatch.setattr(mb._IVFIndex, "gpu_max_k", 16)
    else:
        monkeypatch.setattr(mb._IVFIndex, "append_only_on_cpu", True)
    g = torch.Generator().manual_seed(6)
    d, size, k = 32, 1500, 10
    centre = _unit(1, d, g)
    near = F.normalize(centre + torch.randn(size, d, generator=g) / 8.0, dim=1)
    far = F.normalize(-centre + torch.randn(1000, d, generator=g) / 8.0, dim=1)
    exact = MemoryBank(size, d, backend="torch")
    approx = MemoryBank(size, d, backend="faiss-ivf", nlist=8, nprobe=8)
    for bank in (exact, approx):
        bank.add(near)
    approx.search(centre, 1)  # builds the index over the near rows
    idx = approx._index
    assert idx.append_only and idx.on_gpu == fake_gpu
    for bank in (exact, approx):  # overwrite 1000 near rows (now stale) with far ones
        for lo in range(0, 1000, 250):
            bank.add(far[lo : lo + 250])
    assert idx.n_stale == 1000 and idx.index.ntotal == 2500
    q = F.normalize(centre + torch.randn(4, d, generator=g) / 8.0, dim=1)
    se, pe = exact.search(q, k)
    sa, pa = approx.search(q, k)
    # every hit is a live row, with the score of what the row holds now
    assert (pa >= 0).all()
    torch.testing.assert_close((approx.features[pa] * q[:, None]).sum(-1), sa)
    assert bool((pa >= 1000).all())  # rows 0..999 now hold the far vectors
    hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(pa, pe, strict=True))
    assert hits / pe.numel() >= 0.9
    if fake_gpu:  # 16 hits per search hold < k live ones: rebuilt without the stale rows
        assert approx._index.n_stale == 0 and approx._index.index.ntotal == size
    # a full turn of stale rows drops the index; the next search rebuilds it
    approx.add(far[:500])
    if fake_gpu:
        assert approx._index.n_stale == 500
    else:  # 1500 stale rows = size: dropped
        assert approx._index.index is None
    approx.add(near[:1000])
    _, pa2 = approx.search(q, k)
    assert (pa2 >= 0).all() and bool((pa2 < 1000).all())  # the near rows written last
    assert approx._index.n_stale < size


def test_auto_nlist_follows_faiss_guideline() -> None:
    # 4 sqrt(N) rounded to a power of two
    assert [auto_nlist(n) for n in (1, 16_384, 65_536, 262_144, 1_000_000)] == [
        4, 512, 1024, 2048, 4096]
    for n in (10, 1000, 123_457, 10**7):
        assert auto_nlist(n) & (auto_nlist(n) - 1) == 0
        assert 2 * math.sqrt(n) < auto_nlist(n) <= 8 * math.sqrt(n)


def test_ivf_default_cells_are_auto_and_capped_by_training_points() -> None:
    g = torch.Generator().manual_seed(5)
    bank = MemoryBank(5000, 16, backend="faiss-ivf")
    bank.add(_unit(5000, 16, g))
    bank.search(_unit(2, 16, g), 3)  # trains the index
    # auto_nlist(5000) = 256, but faiss wants >= 39 points per cell: 5000 // 39 = 128
    assert bank._index.index.nlist == 128
    small = MemoryBank(5000, 16, backend="faiss-ivf", nlist=32)
    small.add(_unit(5000, 16, g))
    small.search(_unit(2, 16, g), 3)
    assert small._index.index.nlist == 32


@pytest.mark.parametrize("backend", ALL)
def test_state_dict_round_trip(backend: str) -> None:
    g = torch.Generator().manual_seed(4)
    d = 16
    src = MemoryBank(500, d, backend=backend, nlist=8, nprobe=2)
    for _ in range(4):  # 4 x 170 rows: wraps
        src.add(_unit(170, d, g), labels=torch.randint(0, 3, (170,), generator=g),
                indices=torch.randint(0, 1000, (170,), generator=g))
    q = _unit(6, d, g)
    src.search(q, 5)
    dst = MemoryBank(500, d, backend=backend, nlist=8, nprobe=2)
    dst.load_state_dict(src.state_dict())
    assert len(dst) == len(src) and dst.ptr == src.ptr
    assert torch.equal(dst._features, src._features)
    assert torch.equal(dst._labels, src._labels) and torch.equal(dst._indices, src._indices)
    src.rebuild_index()  # same buffers -> same rebuilt index -> same results
    s1, p1 = src.search(q, 5, exclude_indices=torch.arange(6))
    s2, p2 = dst.search(q, 5, exclude_indices=torch.arange(6))
    assert torch.equal(p1, p2)
    torch.testing.assert_close(s1, s2)
    # further adds continue from the restored pointer identically
    x = _unit(30, d, g)
    src.add(x)
    dst.add(x)
    assert torch.equal(dst._features, src._features) and dst.ptr == src.ptr


def test_load_state_dict_shape_mismatch() -> None:
    state = MemoryBank(10, 4).state_dict()
    with pytest.raises(ValueError, match="size=12"):
        MemoryBank(12, 4).load_state_dict(state)
    with pytest.raises(ValueError, match="dim=5"):
        MemoryBank(10, 5).load_state_dict(state)


def test_bad_input() -> None:
    bank = MemoryBank(10, 4)
    with pytest.raises(ValueError, match="features"):
        bank.add(torch.randn(3, 5))
    with pytest.raises(ValueError, match="features"):
        bank.add(torch.full((2, 4), math.nan))
    with pytest.raises(ValueError, match="features"):
        bank.add(torch.randn(4))
    with pytest.raises(ValueError, match="labels"):
        bank.add(torch.randn(3, 4), labels=torch.arange(2))
    with pytest.raises(ValueError, match="indices"):
        bank.add(torch.randn(3, 4), indices=torch.zeros(3))
    bank.add(torch.randn(3, 4))
    with pytest.raises(ValueError, match="queries"):
        bank.search(torch.randn(2, 3), 1)
    with pytest.raises(ValueError, match="`k`"):
        bank.search(torch.randn(2, 4), 0)
    with pytest.raises(ValueError, match="exclude_indices"):
        bank.search(torch.randn(2, 4), 1, exclude_indices=torch.arange(3))
    with pytest.raises(ValueError, match="exclude_indices"):
        MemoryBank(10, 4, store_indices=False).search(
            torch.randn(2, 4), 1, exclude_indices=torch.arange(2)
        )
    with pytest.raises(ValueError, match="size"):
        MemoryBank(0, 4)
    with pytest.raises(ValueError, match="backend"):
        MemoryBank(10, 4, backend="annoy")
    with pytest.raises(ValueError, match="nlist"):
        MemoryBank(10, 4, backend="faiss-ivf", nlist=0)
    with pytest.raises(ValueError, match="nlist"):
        MemoryBank(10, 4, backend="faiss-ivf", nlist=2.5)  # type: ignore[arg-type]
    assert len(bank) == 3  # failed calls changed nothing


def test_add_and_torch_search_read_no_tensor_value() -> None:
    """Enqueueing (any batch size, wrapping), the filled view and an exact torch search read
    no tensor value back to the host (on a GPU each read would wait for the device): the
    pointer and fill count are host copies, kept equal to their buffers."""
    from contrastmix import _validation
    from tests._host_reads import forbid_host_reads

    g = torch.Generator().manual_seed(9)
    bank = MemoryBank(20, 4)
    ref = _RefRing(20, 4)
    before = _validation.debug_checks()
    _validation.set_debug_checks(False)  # the accelerator rule: no value checks
    try:
        for n in (3, 0, 17, 25, 6):
            x = _unit(n, 4, g)
            lab, ids, q = torch.randint(0, 5, (n,), generator=g), torch.arange(n), _unit(2, 4, g)
            with forbid_host_reads():
                bank.add(x, labels=lab, indices=ids)
                feats, filled, ptr = bank.features, len(bank), bank.ptr
                bank.search(q, 3, exclude_indices=torch.arange(2))
            ref.add(x, lab, ids)
            assert feats.shape == (filled, 4) and ptr == ref.ptr
            assert (int(bank._ptr), int(bank._filled)) == (ptr, filled)
    finally:
        _validation.set_debug_checks(before)
    assert torch.equal(bank._features, ref.feats)
    bank.reset()
    assert (len(bank), bank.ptr, int(bank._ptr), int(bank._filled)) == (0, 0, 0, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_add_and_search_do_not_synchronise() -> None:
    """A bank on a GPU: ``add`` (CPU labels and ids copied asynchronously), ``features`` and
    the torch search under ``torch.cuda.set_sync_debug_mode("error")``."""
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(10)
    bank = MemoryBank(64, 8).to(dev)
    cpu = MemoryBank(64, 8)
    batches = [(_unit(n, 8, g), torch.randint(0, 5, (n,), generator=g), torch.arange(n))
               for n in (10, 40, 30)]
    q = _unit(4, 8, g).to(dev)
    bank.search(q, 3)  # warm-up (library initialisation)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, lab, ids in batches:
            bank.add(x.to(dev), labels=lab, indices=ids)
            feats = bank.features
            bank.search(q, 3, exclude_indices=torch.arange(4, device=dev))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for x, lab, ids in batches:
        cpu.add(x, labels=lab, indices=ids)
    assert feats.shape == (64, 8) and bank.ptr == cpu.ptr and len(bank) == len(cpu)
    for key, value in cpu.state_dict().items():
        assert torch.equal(bank.state_dict()[key].cpu(), value), key
