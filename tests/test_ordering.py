"""contrastmix.eval.ordering: Spearman correlation of embedding and label distances."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy.stats import rankdata, spearmanr

from contrastmix.eval.ordering import (
    average_ranks,
    distance_spearman,
    pairwise_distances,
    spearman_correlation,
)


def _brute_force(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Explicit loops over pairs i < j, then scipy's Spearman."""
    f = [[float(v) for v in row] for row in features.double()]
    norms = [math.sqrt(sum(v * v for v in row)) for row in f]
    z = [[v / n for v in row] for row, n in zip(f, norms, strict=True)]
    y = labels.double().reshape(len(z), -1).tolist()
    d, e = [], []
    for i, j in itertools.combinations(range(len(z)), 2):
        d.append(math.sqrt(sum((a - b) ** 2 for a, b in zip(z[i], z[j], strict=True))))
        e.append(math.sqrt(sum((a - b) ** 2 for a, b in zip(y[i], y[j], strict=True))))
    return float(spearmanr(d, e).statistic)


def _arc(labels: torch.Tensor, dim: int = 8, seed: int = 0) -> torch.Tensor:
    """A perfectly ordered 1-D embedding: labels -> angle in [0, pi/2] on a circle in a random
    2-D plane of R^dim (chord length is increasing in the label distance)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, 2, generator=g, dtype=torch.float64))
    y = labels.double()
    theta = (y - y.min()) / (y.max() - y.min()) * (math.pi / 2)
    return torch.stack([theta.cos(), theta.sin()], dim=1) @ q.T


def test_average_ranks_matches_scipy_with_ties() -> None:
    v = torch.tensor([3.0, 1.0, 3.0, 2.0, 1.0, 3.0, 0.5, 7.0])
    assert torch.equal(average_ranks(v), torch.from_numpy(rankdata(v.numpy())).double())
    w = torch.randint(0, 5, (200,)).double()
    assert torch.allclose(average_ranks(w), torch.from_numpy(rankdata(w.numpy())).double())


def test_spearman_correlation_matches_scipy_and_signs() -> None:
    a = torch.randint(0, 6, (100,)).double()
    b = a + torch.randint(0, 3, (100,)).double()
    assert spearman_correlation(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    x = torch.rand(50)
    assert spearman_correlation(x, x**3) == pytest.approx(1.0)
    assert spearman_correlation(x, -x) == pytest.approx(-1.0)
    assert math.isnan(spearman_correlation(x, torch.ones(50)))


def test_matches_brute_force_reference() -> None:
    f = torch.randn(40, 5)
    y = torch.randint(0, 8, (40,)).float()  # many tied label distances
    assert distance_spearman(f, y) == pytest.approx(_brute_force(f, y), abs=1e-10)
    y2 = torch.rand(40) * 90
    f2 = torch.randn(40, 3) + y2[:, None] / 30
    assert distance_spearman(f2, y2) == pytest.approx(_brute_force(f2, y2), abs=1e-10)


def test_perfectly_ordered_1d_embedding_gives_one() -> None:
    y = torch.rand(120, dtype=torch.float64) * 90
    z = _arc(y)
    assert distance_spearman(z, y) == pytest.approx(1.0, abs=1e-12)
    # A scrambled embedding of the same points is not ordered.
    assert distance_spearman(z[torch.randperm(120)], y) < 0.5


def test_invariances() -> None:
    y = torch.rand(80, dtype=torch.float64) * 10
    f = _arc(y, dim=6) + 0.3 * torch.randn(80, 6, dtype=torch.float64)
    ref = distance_spearman(f, y)
    assert 0.2 < ref < 1.0
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    scale = torch.rand(80, 1, dtype=torch.float64) * 5 + 0.1
    assert distance_spearman(f @ q * scale, y) == pytest.approx(ref, abs=1e-10)  # norm/rotation
    assert distance_spearman(f, 3.0 * y - 7.0) == pytest.approx(ref, abs=1e-10)  # affine labels
    perm = torch.randperm(80)
    assert distance_spearman(f[perm], y[perm]) == pytest.approx(ref, abs=1e-10)
    assert distance_spearman(f.float(), y.float()) == pytest.approx(ref, abs=1e-5)


def test_unordered_features_are_near_zero() -> None:
    y = torch.rand(300) * 90
    f = torch.randn(300, 16)
    assert abs(distance_spearman(f, y)) < 0.05


def test_subsample_is_seeded_and_exact() -> None:
    y = torch.rand(60)
    f = torch.randn(60, 4) + y[:, None]
    a = distance_spearman(f, y, max_samples=25, seed=3)
    assert a == distance_spearman(f, y, max_samples=25, seed=3)
    assert a != distance_spearman(f, y, max_samples=25, seed=4)
    keep = torch.randperm(60, generator=torch.Generator().manual_seed(3))[:25]
    assert a == pytest.approx(_brute_force(f[keep], y[keep]), abs=1e-10)
    # max_samples >= N: every row is used, whatever the seed.
    assert distance_spearman(f, y, max_samples=60, seed=1) == distance_spearman(f, y, seed=9)


def test_vector_labels_and_pairwise_distances() -> None:
    pts = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    assert torch.equal(pairwise_distances(pts), torch.tensor([5.0, 10.0, 5.0], dtype=torch.float64))
    y = torch.rand(30, 2)
    f = torch.randn(30, 3)
    assert distance_spearman(f, y) == pytest.approx(_brute_force(f, y), abs=1e-10)
    y1 = torch.rand(30)
    assert distance_spearman(f, y1[:, None]) == pytest.approx(distance_spearman(f, y1), abs=1e-12)


def test_degenerate_and_bad_input() -> None:
    f = torch.randn(10, 3)
    assert math.isnan(distance_spearman(f, torch.ones(10)))  # constant label distances
    with pytest.raises(ValueError, match="labels"):
        distance_spearman(f, torch.ones(9))
    with pytest.raises(ValueError, match="features"):
        distance_spearman(torch.randn(10), torch.ones(10))
    with pytest.raises(ValueError, match="features"):
        distance_spearman(torch.full((10, 3), math.nan), torch.rand(10))
    with pytest.raises(ValueError, match="labels"):
        distance_spearman(f, torch.tensor([math.inf] * 10))
    with pytest.raises(ValueError, match="features"):
        distance_spearman(torch.randn(1, 3), torch.rand(1))
    with pytest.raises(ValueError, match="max_samples"):
        distance_spearman(f, torch.rand(10), max_samples=1)
    with pytest.raises(ValueError, match="features"):
        distance_spearman(torch.randint(0, 3, (10, 3)), torch.rand(10))
