"""Tests for contrastmix.eval.geometry: alignment, uniformity, effective rank, modality gap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastmix.eval.geometry import (
    alignment,
    effective_rank,
    modality_gap,
    multimodal_geometry,
    uniformity,
)


def _uniformity_loop(x: torch.Tensor, t: float) -> float:
    z = F.normalize(x.double(), dim=1)
    vals = []
    for i in range(z.shape[0]):
        for j in range(i + 1, z.shape[0]):
            vals.append(math.exp(-t * float(((z[i] - z[j]) ** 2).sum())))
    return math.log(sum(vals) / len(vals))


def test_uniformity_matches_pair_loop_and_chunks() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(23, 5, generator=g)
    for t in (0.5, 2.0, 4.0):
        ref = _uniformity_loop(x, t)
        for chunk in (1, 4, 7, 22, 100):
            assert float(uniformity(x, t, chunk_size=chunk)) == pytest.approx(ref, abs=1e-12)


def test_uniformity_identical_points_is_zero_with_finite_grad() -> None:
    x = torch.tensor([[0.3, -1.2, 0.5]]).repeat(10, 1).requires_grad_(True)
    u = uniformity(x)
    assert abs(float(u.detach())) < 1e-12
    u.backward()
    assert torch.isfinite(x.grad).all()


def test_uniformity_random_high_dim_near_minus_four() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1500, 1024, generator=g)
    u = float(uniformity(x))
    # E exp(-2 ||xi - xj||^2) = e^{-4} E e^{4 cos} ~ e^{-4 + 8/d}
    assert u == pytest.approx(-4.0 + 8.0 / 1024, abs=0.02)
    assert u < -3.9


def test_uniformity_two_points_and_gradient() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    u = uniformity(x, t=2.0)
    assert float(u.detach()) == pytest.approx(-4.0, abs=1e-12)  # ||e1 - e2||^2 = 2
    u.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_uniformity_max_samples_is_a_seeded_subset() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, 8, generator=g)
    a = uniformity(x, max_samples=50, generator=torch.Generator().manual_seed(5))
    b = uniformity(x, max_samples=50, generator=torch.Generator().manual_seed(5))
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(5))[:50]
    assert float(a) == float(b)
    assert float(a) == pytest.approx(float(uniformity(x[perm])), abs=1e-12)
    assert float(uniformity(x, max_samples=500)) == float(uniformity(x))


def test_uniformity_errors() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        uniformity(torch.randn(1, 4))
    with pytest.raises(ValueError, match="at least 2"):
        uniformity(torch.randn(0, 4))
    bad = torch.randn(5, 3)
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="`x`"):
        uniformity(bad)
    with pytest.raises(ValueError, match="`t`"):
        uniformity(torch.randn(5, 3), t=0.0)
    with pytest.raises(ValueError, match="`x`"):
        uniformity(torch.randn(5))


def test_alignment_values_and_loop() -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(17, 6, generator=g), torch.randn(17, 6, generator=g)
    xn, yn = F.normalize(x.double(), dim=1), F.normalize(y.double(), dim=1)
    for alpha in (1.0, 2.0, 3.0):
        ref = sum(float(torch.linalg.vector_norm(xn[i] - yn[i])) ** alpha for i in range(17)) / 17
        assert float(alignment(x, y, alpha)) == pytest.approx(ref, abs=1e-12)
    assert float(alignment(x, x)) == pytest.approx(0.0, abs=1e-15)
    assert float(alignment(x, -3 * x)) == pytest.approx(4.0, abs=1e-12)  # antipodal: max
    assert 0.0 <= float(alignment(x, y)) <= 4.0


def test_alignment_errors() -> None:
    with pytest.raises(ValueError, match="length mismatch"):
        alignment(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="`y`"):
        alignment(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="alpha"):
        alignment(torch.randn(4, 3), torch.randn(4, 3), alpha=0)


def test_effective_rank_known_spectra() -> None:
    assert float(effective_rank(torch.eye(7))) == pytest.approx(7.0, rel=1e-12)
    v = torch.randn(20, 1, generator=torch.Generator().manual_seed(4))
    w = torch.randn(1, 9, generator=torch.Generator().manual_seed(5))
    assert float(effective_rank(v @ w)) == pytest.approx(1.0, abs=1e-6)
    d = torch.diag(torch.tensor([3.0, 3.0, 0.0, 0.0]))
    assert float(effective_rank(d)) == pytest.approx(2.0, rel=1e-12)
    assert float(effective_rank(torch.zeros(5, 3))) == 0.0


def test_effective_rank_matches_numpy_and_is_scale_invariant() -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(50, 12, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 12)
    s = np.linalg.svd(x.numpy(), compute_uv=False)
    p = s / s.sum()
    ref = float(np.exp(-(p * np.log(p)).sum()))
    assert float(effective_rank(x)) == pytest.approx(ref, rel=1e-10)
    assert float(effective_rank(5 * x)) == pytest.approx(ref, rel=1e-10)
    xc = x - x.mean(0)
    assert float(effective_rank(x, center=True)) == pytest.approx(float(effective_rank(xc)))
    assert 1.0 <= ref <= 12.0


def test_modality_gap() -> None:
    e1 = torch.tensor([[1.0, 0.0, 0.0]])
    assert float(modality_gap(e1.repeat(4, 1), 5 * e1.repeat(3, 1))) == pytest.approx(0.0)
    assert float(modality_gap(e1.repeat(4, 1), -e1.repeat(3, 1))) == pytest.approx(2.0)
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(30, 4, generator=g), torch.randn(20, 4, generator=g) + 1
    ref = torch.linalg.vector_norm(
        F.normalize(a.double(), dim=1).mean(0) - F.normalize(b.double(), dim=1).mean(0)
    )
    assert float(modality_gap(a, b)) == pytest.approx(float(ref), abs=1e-12)
    with pytest.raises(ValueError, match="`b`"):
        modality_gap(a, torch.randn(3, 5))


def test_multimodal_geometry_report() -> None:
    g = torch.Generator().manual_seed(8)
    a, b = torch.randn(40, 6, generator=g), torch.randn(40, 6, generator=g)
    rep = multimodal_geometry(a, b)
    assert set(rep) == {
        "uniformity_a", "uniformity_b", "uniformity_union", "modality_gap", "alignment"
    }
    assert rep["uniformity_union"] == pytest.approx(float(uniformity(torch.cat([a, b]))))
    assert "alignment" not in multimodal_geometry(a, b[:30])
