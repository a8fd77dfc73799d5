"""Tests for contrastmix.eval.knn: weighted kNN classifier (docs/methods.md §9)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from contrastmix.eval._knn_rescore import bf16_matmul_available, rescored_topk
from contrastmix.eval.knn import _neighbours_torch, knn_accuracy, knn_predict, knn_scores

BF16 = bf16_matmul_available()
BACKENDS = ("torch", "faiss", *(("bf16",) if BF16 else ()))


def _scores_loop(
    bank: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, k: int, tau: float, c: int
) -> torch.Tensor:
    """Reference: explicit loops, exp(s/tau) weights, ties at the cut -> lower index."""
    f = F.normalize(bank.double(), dim=1)
    q = F.normalize(queries.double(), dim=1)
    k = min(k, f.shape[0])
    out = torch.zeros(q.shape[0], c, dtype=torch.float64)
    for i in range(q.shape[0]):
        sims = [(float(q[i] @ f[j]), j) for j in range(f.shape[0])]
        sims.sort(key=lambda t: (-t[0], t[1]))
        for s, j in sims[:k]:
            out[i, int(labels[j])] += math.exp(s / tau)
        out[i] /= out[i].sum()
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_toy(backend: str) -> None:
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    labels = torch.tensor([0, 1, 1, 0])
    q = torch.tensor([[2.0, 0.0]])  # normalised inside -> sims 1, 0, -1, 0.6
    # k = 2: neighbours 0 (s=1) and 3 (s=.6), both class 0
    sc = knn_scores(bank, labels, q, k=2, temperature=1.0, backend=backend)
    assert torch.allclose(sc, torch.tensor([[1.0, 0.0]]))
    # k = 3 adds neighbour 1 (s=0, class 1)
    sc = knn_scores(bank, labels, q, k=3, temperature=1.0, backend=backend)
    w0, w1 = math.e + math.exp(0.6), 1.0
    assert torch.allclose(sc, torch.tensor([[w0, w1]]) / (w0 + w1), atol=1e-6)
    assert knn_predict(bank, labels, q, k=3, temperature=1.0, backend=backend).tolist() == [0]
    # k = 4, tau = 0.5: class 1 gets exp(0/.5) + exp(-1/.5)
    sc = knn_scores(bank, labels, q, k=4, temperature=0.5, backend=backend)
    w0, w1 = math.exp(2) + math.exp(1.2), 1 + math.exp(-2)
    assert torch.allclose(sc, torch.tensor([[w0, w1]]) / (w0 + w1), atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_loop_reference(backend: str) -> None:
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(60, 5, generator=g)
    labels = torch.randint(0, 4, (60,), generator=g)
    q = torch.randn(25, 5, generator=g)
    for k, tau in ((1, 0.1), (7, 0.07), (20, 0.5)):
        ref = _scores_loop(bank, labels, q, k, tau, 4)
        got = knn_scores(bank, labels, q, k=k, temperature=tau, backend=backend)
        assert torch.allclose(got.double(), ref, atol=1e-5)
        assert torch.equal(
            knn_predict(bank, labels, q, k=k, temperature=tau, backend=backend), ref.argmax(1)
        )


def test_large_tau_is_majority_vote_small_tau_is_1nn() -> None:
    # nearest neighbour is class 0, but 3 of the 5 neighbours are class 1
    bank = torch.tensor(
        [[1.0, 0.0], [0.9, 0.3], [0.9, -0.35], [0.8, 0.5], [0.8, -0.55], [-1.0, 0.0]]
    )
    labels = torch.tensor([0, 1, 1, 1, 0, 0])
    q = torch.tensor([[1.0, 0.0]])
    assert knn_predict(bank, labels, q, k=5, temperature=1e6).tolist() == [1]
    assert knn_predict(bank, labels, q, k=5, temperature=1e-6).tolist() == [0]
    # on random data: tau -> 0 equals the label of the most similar bank row
    g = torch.Generator().manual_seed(1)
    bank = torch.randn(200, 8, generator=g)
    labels = torch.randint(0, 5, (200,), generator=g)
    q = torch.randn(50, 8, generator=g)
    nn_idx = (F.normalize(q, dim=1) @ F.normalize(bank, dim=1).T).argmax(1)
    for backend in BACKENDS:
        pred = knn_predict(bank, labels, q, k=30, temperature=1e-6, backend=backend)
        assert torch.equal(pred, labels[nn_idx])
        # tau -> inf: plain vote counts among the k neighbours
        sims = F.normalize(q, dim=1) @ F.normalize(bank, dim=1).T
        idx = sims.topk(30, dim=1).indices
        counts = torch.zeros(50, 5).scatter_add_(1, labels[idx], torch.ones(50, 30))
        sc = knn_scores(bank, labels, q, k=30, temperature=1e9, backend=backend)
        assert torch.allclose(sc, counts / 30, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_is_clamped_to_bank_size(backend: str) -> None:
    g = torch.Generator().manual_seed(2)
    bank = torch.randn(10, 4, generator=g)
    labels = torch.randint(0, 3, (10,), generator=g)
    q = torch.randn(6, 4, generator=g)
    a = knn_scores(bank, labels, q, k=1000, backend=backend)
    b = knn_scores(bank, labels, q, k=10, backend=backend)
    assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_at_cutoff_go_to_lower_index(backend: str) -> None:
    # rows 1 and 2 (and 3) are identical with different labels: k=2 keeps row 1
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 2, 3])
    q = torch.tensor([[1.0, 0.5]])
    sc = knn_scores(bank, labels, q, k=2, temperature=0.1, backend=backend)
    assert sc[0, 1] > 0 and sc[0, 2] == 0 and sc[0, 3] == 0
    sc = knn_scores(bank, labels, q, k=3, temperature=0.1, backend=backend)
    assert sc[0, 1] > 0 and sc[0, 2] > 0 and sc[0, 3] == 0
    # many duplicated bank rows: still the lowest indices
    bank = torch.cat([torch.tensor([[0.0, 1.0]]).repeat(50, 1)])
    labels = torch.arange(50) % 7
    sc = knn_scores(bank, labels, q, k=5, temperature=0.1, backend=backend)
    assert torch.allclose(sc[0], torch.tensor([0.2] * 5 + [0.0] * 2))


def test_class_score_ties_go_to_lowest_class() -> None:
    bank = torch.tensor([[0.6, 0.8], [0.6, -0.8]])
    labels = torch.tensor([3, 1])
    q = torch.tensor([[1.0, 0.0]])
    assert knn_predict(bank, labels, q, k=2).tolist() == [1]


def test_chunking_scale_dtype_and_backends_agree() -> None:
    g = torch.Generator().manual_seed(3)
    bank = torch.randn(300, 16, generator=g)
    labels = torch.randint(0, 6, (300,), generator=g)
    q = torch.randn(97, 16, generator=g)
    ref = knn_scores(bank, labels, q, k=20, backend="torch")
    for chunk in (1, 10, 96, 1000):  # BLAS may round the last bit differently per shape
        got = knn_scores(bank, labels, q, k=20, backend="torch", chunk_size=chunk)
        assert torch.allclose(got, ref, atol=1e-6) and torch.equal(got.argmax(1), ref.argmax(1))
    # features are normalised inside: rescaling rows changes nothing
    scale = torch.rand(300, 1, generator=g) + 0.5
    pred = knn_predict(bank * scale, labels, q * 3, k=20)
    assert torch.equal(pred, ref.argmax(1))
    assert torch.equal(knn_predict(bank, labels, q, k=20, backend="faiss", chunk_size=13),
                       ref.argmax(1))
    assert torch.equal(
        knn_predict(bank, labels, q, k=20, backend="auto", faiss_min_bank=10), ref.argmax(1)
    )
    s64 = knn_scores(bank.double(), labels, q.double(), k=20)
    assert s64.dtype == torch.float64 and torch.allclose(s64.float(), ref, atol=1e-5)
    assert knn_scores(bank, labels, q, k=20, num_classes=9).shape == (97, 9)
    assert knn_scores(bank, labels, q[:0], k=20).shape == (0, 6)


def test_knn_accuracy() -> None:
    g = torch.Generator().manual_seed(4)
    centers = torch.randn(3, 10, generator=g) * 5
    y = torch.randint(0, 3, (120,), generator=g)
    x = centers[y] + 0.1 * torch.randn(120, 10, generator=g)
    assert knn_accuracy(x[:80], y[:80], x[80:], y[80:], k=10) == 1.0
    wrong = (y[80:] + 1) % 3
    assert knn_accuracy(x[:80], y[:80], x[80:], wrong, k=10) == 0.0


def test_bad_input() -> None:
    bank, labels, q = torch.randn(10, 4), torch.randint(0, 3, (10,)), torch.randn(5, 4)
    bad = bank.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="train_x"):
        knn_predict(bad, labels, q)
    q_inf = q.clone()
    q_inf[1, 2] = float("inf")
    with pytest.raises(ValueError, match="test_x"):
        knn_predict(bank, labels, q_inf)
    # huge but finite rows (their sum overflows) are valid input
    big = torch.full((10, 4), 3e38)
    assert knn_predict(big, labels, q).shape == (5,)
    with pytest.raises(ValueError, match="length mismatch"):
        knn_predict(bank, labels[:7], q)
    with pytest.raises(ValueError, match="test_x"):
        knn_predict(bank, labels, torch.randn(5, 3))
    with pytest.raises(ValueError, match="`k`"):
        knn_predict(bank, labels, q, k=0)
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(bank, labels, q, temperature=0.0)
    with pytest.raises(ValueError, match="train_y"):
        knn_predict(bank, labels.float(), q)
    with pytest.raises(ValueError, match="train_y"):
        knn_predict(bank, labels - 1, q)
    with pytest.raises(ValueError, match="backend"):
        knn_predict(bank, labels, q, backend="annoy")
    with pytest.raises(ValueError, match="num_classes"):
        knn_predict(bank, labels, q, num_classes=1)
    with pytest.raises(ValueError, match="empty"):
        knn_predict(bank[:0], labels[:0], q)


@pytest.mark.skipif(not BF16, reason="CPU without AVX512-BF16/AMX-BF16")
@pytest.mark.parametrize("case", ["clustered", "near_duplicates", "k_equals_n"])
def test_bf16_screening_gives_the_exact_neighbours(case: str) -> None:
    """The bf16 screen + fp32 re-ranking returns the fp32 path's neighbours, also when rows
    differ by less than bf16 can resolve (the screen sees ties, the re-ranking does not)."""
    g = torch.Generator().manual_seed(4)
    n, d, k = 3000, 64, 50
    centres = torch.randn(20, d, generator=g)
    bank = centres[torch.randint(0, 20, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g)
    q = centres[torch.randint(0, 20, (300,), generator=g)] + 0.5 * torch.randn(300, d, generator=g)
    if case == "near_duplicates":
        # cosines to the queries ~0.998 +- 0.001: below bf16's resolution (2^-8) near 1
        bank[1000:1400] = bank[999] + 0.05 * torch.randn(400, d, generator=g)
        q[:50] = bank[999] + 0.05 * torch.randn(50, d, generator=g)
    if case == "k_equals_n":
        bank, k = bank[:40], 40
    bank, q = F.normalize(bank, dim=1), F.normalize(q, dim=1)
    got = rescored_topk(bank, q, k, chunk_size=128)
    ref = _neighbours_torch(bank, q, k, chunk_size=128)
    gv, gi = torch.cat([v for v, _ in got]), torch.cat([i for _, i in got])
    rv, ri = torch.cat([v for v, _ in ref]), torch.cat([i for _, i in ref])
    torch.testing.assert_close(gv, rv, atol=2e-6, rtol=0)
    exact = q.double() @ bank.double().T
    kth = exact.topk(k, dim=1).values[:, -1:]
    assert bool((exact.gather(1, gi) >= kth - 1e-6).all())  # a true top-k (up to fp32 ties)
    same = sum(set(gi[r].tolist()) == set(ri[r].tolist()) for r in range(q.shape[0]))
    assert same >= 0.95 * q.shape[0]
    gap = (rv[:, 1:] - rv[:, :-1]).abs() > 1e-5  # gap[:, t]: ranks t and t+1 are separated
    sep = torch.ones_like(rv, dtype=torch.bool)
    sep[:, 1:] &= gap
    sep[:, :-1] &= gap
    assert sep.float().mean() > 0.5
    assert torch.equal(gi[sep], ri[sep])
    labels = torch.randint(0, 5, (bank.shape[0],), generator=g)
    assert torch.equal(knn_predict(bank, labels, q, k=k, backend="bf16"),
                       knn_predict(bank, labels, q, k=k, backend="torch"))


def test_bf16_backend_needs_float32_cpu() -> None:
    bank = torch.randn(10, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="bf16"):
        knn_scores(bank, torch.zeros(10, dtype=torch.long), bank, k=3, backend="bf16")


@pytest.mark.skipif(not BF16, reason="CPU without AVX512-BF16/AMX-BF16")
def test_bf16_screening_with_more_survivors_than_its_first_buffer() -> None:
    """9000 equal bank rows: every row survives the screen (more than the kernel's first
    buffer); the result is still the exact top-k, ties by bank index."""
    g = torch.Generator().manual_seed(5)
    bank = torch.cat([F.normalize(torch.ones(9000, 8), dim=1),
                      F.normalize(torch.randn(100, 8, generator=g), dim=1)])
    q = F.normalize(torch.ones(3, 8) + 0.01 * torch.randn(3, 8, generator=g), dim=1)
    (vals, idx), = rescored_topk(bank, q, 10, chunk_size=3)
    ref_v, ref_i = _neighbours_torch(bank, q, 10, chunk_size=3)[0]
    torch.testing.assert_close(vals, ref_v, atol=2e-6, rtol=0)
    assert idx.tolist() == [list(range(10))] * 3
