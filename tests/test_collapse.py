"""Tests for contrastmix.eval.collapse: neural-collapse metrics and mixup geometry
(docs/methods.md §8)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from contrastmix.eval.collapse import (
    mixup_geometry,
    neural_collapse,
    plot_mixup_projection,
    three_class_projection,
)


def _rotation(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


def _etf(c: int, d: int, seed: int = 0) -> torch.Tensor:
    """``[C, d]`` simplex-ETF class means (unit norm, cos = -1/(C-1)), randomly rotated."""
    m = math.sqrt(c / (c - 1)) * (torch.eye(c, dtype=torch.float64) - 1.0 / c)
    full = torch.zeros(c, d, dtype=torch.float64)
    full[:, :c] = m
    return full @ _rotation(d, seed).T


def _noisy_data(c: int = 4, d: int = 10, per: int = 30, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(c, d, generator=g, dtype=torch.float64) * 3
    labels = torch.arange(c).repeat_interleave(per)
    feats = means[labels] + torch.randn(c * per, d, generator=g, dtype=torch.float64)
    return feats, labels


def _nc1_reference(h: np.ndarray, y: np.ndarray, class_mean_global: bool = False) -> float:
    classes = np.unique(y)
    c = len(classes)
    mu = np.stack([h[y == k].mean(0) for k in classes])
    mu_g = mu.mean(0) if class_mean_global else h.mean(0)
    sw = np.zeros((h.shape[1], h.shape[1]))
    for i in range(h.shape[0]):
        r = h[i] - mu[np.searchsorted(classes, y[i])]
        sw += np.outer(r, r)
    sw /= h.shape[0]
    sb = sum(np.outer(m - mu_g, m - mu_g) for m in mu) / c
    vals, vecs = np.linalg.eigh(sb)
    vals, vecs = vals[::-1][: c - 1], vecs[:, ::-1][:, : c - 1]
    sb_pinv = vecs @ np.diag(1 / vals) @ vecs.T
    return float(np.trace(sw @ sb_pinv) / c)


def test_simplex_etf_gives_zero_nc1_nc2_nc3_nc4() -> None:
    c, d = 5, 9
    means = _etf(c, d) * 2.5 + 1.0  # scale and translate: metrics are centred
    labels = torch.arange(c).repeat(6)
    feats = means[labels]
    w = 0.7 * (means - means.mean(0))
    res = neural_collapse(feats, labels, w)
    assert res["nc1"] == pytest.approx(0.0, abs=1e-20)
    for key in ("nc2_equinorm", "nc2_equiangular", "nc2_max_angle", "nc2_equinorm_weight",
                "nc2_equiangular_weight", "nc2_max_angle_weight", "nc3", "nc4"):
        assert res[key] == pytest.approx(0.0, abs=1e-10), key
    assert res["num_classes"] == c and res["num_samples"] == 30


def test_near_collapse_is_small_and_positive() -> None:
    c, d = 4, 8
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(c).repeat(50)
    feats = _etf(c, d)[labels] + 1e-3 * torch.randn(200, d, generator=g, dtype=torch.float64)
    res = neural_collapse(feats, labels)
    assert 0 < res["nc1"] < 1e-4
    assert res["nc2_equiangular"] < 1e-2 and res["nc2_max_angle"] < 1e-2


@pytest.mark.parametrize("global_mean", ["sample", "class_means"])
def test_nc1_matches_explicit_reference(global_mean: str) -> None:
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 5, (150,), generator=g)  # unbalanced classes
    means = torch.randn(5, 12, generator=g, dtype=torch.float64) * 2
    feats = means[labels] + torch.randn(150, 12, generator=g, dtype=torch.float64)
    res = neural_collapse(feats, labels, global_mean=global_mean)
    ref = _nc1_reference(feats.numpy(), labels.numpy(), global_mean == "class_means")
    assert res["nc1"] == pytest.approx(ref, rel=1e-9)


def test_nc2_and_nc3_nc4_match_loops() -> None:
    feats, labels = _noisy_data(c=4, d=6, per=20, seed=3)
    g = torch.Generator().manual_seed(4)
    w = torch.randn(4, 6, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    res = neural_collapse(feats, labels, w, b)
    mu = torch.stack([feats[labels == k].mean(0) for k in range(4)])
    mt = mu - feats.mean(0)
    norms = [float(torch.linalg.vector_norm(mt[k])) for k in range(4)]
    assert res["nc2_equinorm"] == pytest.approx(np.std(norms, ddof=1) / np.mean(norms))
    cos = [
        float(mt[i] @ mt[j] / (mt[i].norm() * mt[j].norm()))
        for i in range(4) for j in range(4) if i != j
    ]
    assert len(cos) == 12
    assert res["nc2_equiangular"] == pytest.approx(np.std(cos, ddof=1))
    assert res["nc2_max_angle"] == pytest.approx(np.mean([abs(x + 1 / 3) for x in cos]))
    wn = [float(w[k].norm()) for k in range(4)]
    assert res["nc2_equinorm_weight"] == pytest.approx(np.std(wn, ddof=1) / np.mean(wn))
    ref3 = float(((w / w.norm()) - (mt / mt.norm())).pow(2).sum())
    assert res["nc3"] == pytest.approx(ref3)
    mism = 0
    for i in range(feats.shape[0]):
        clf = int(torch.argmax(w @ feats[i] + b))
        ncc = int(torch.argmin(torch.stack([(feats[i] - mu[k]).norm() for k in range(4)])))
        mism += clf != ncc
    assert res["nc4"] == pytest.approx(mism / feats.shape[0])


def test_nc1_invariant_to_rotation_scale_translation() -> None:
    feats, labels = _noisy_data(c=5, d=8, per=25, seed=5)
    q = _rotation(8, 6)
    t = torch.randn(8, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 10
    for gm in ("sample", "class_means"):
        base = neural_collapse(feats, labels, global_mean=gm)
        moved = neural_collapse(3.7 * feats @ q.T + t, labels, global_mean=gm)
        for key in ("nc1", "nc2_equinorm", "nc2_equiangular", "nc2_max_angle"):
            assert moved[key] == pytest.approx(base[key], rel=1e-8), key
    # NC2 (but not NC1) is also invariant to scale + rotation without translation
    scaled = neural_collapse(0.01 * feats @ q.T, labels)
    assert scaled["nc2_equiangular"] == pytest.approx(base["nc2_equiangular"], rel=1e-8)


def test_float32_input_is_computed_in_float64() -> None:
    feats, labels = _noisy_data(seed=8)
    a = neural_collapse(feats, labels)["nc1"]
    b = neural_collapse(feats.float(), labels)["nc1"]
    ref = neural_collapse(feats.float().double(), labels)["nc1"]
    assert b == ref and a == pytest.approx(b, rel=1e-5)


def test_empty_classes_are_dropped() -> None:
    feats, labels = _noisy_data(c=3, d=6, per=15, seed=9)
    ids = torch.tensor([0, 2, 5])
    sparse_labels = ids[labels]
    g = torch.Generator().manual_seed(10)
    w = torch.randn(6, 6, generator=g, dtype=torch.float64)
    res = neural_collapse(feats, sparse_labels, w)
    dense = neural_collapse(feats, labels, w[ids])
    assert res["num_classes"] == 3
    for key in ("nc1", "nc2_equinorm", "nc2_equiangular", "nc2_max_angle", "nc3",
                "nc2_equinorm_weight"):
        assert res[key] == pytest.approx(dense[key], rel=1e-10), key


def test_warnings_for_two_classes_and_small_d() -> None:
    feats, labels = _noisy_data(c=2, d=5, per=10, seed=11)
    with pytest.warns(UserWarning, match="2 classes"):
        res = neural_collapse(feats, labels)
    assert res["nc2_equiangular"] == pytest.approx(0.0, abs=1e-12)
    feats, labels = _noisy_data(c=6, d=3, per=10, seed=12)
    with pytest.warns(UserWarning, match="simplex ETF"):
        neural_collapse(feats, labels)
    feats, labels = _noisy_data(c=4, d=5, per=10, seed=13)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        neural_collapse(feats, labels)


def test_bad_input() -> None:
    feats, labels = _noisy_data(c=3, d=4, per=5, seed=14)
    bad = feats.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="features"):
        neural_collapse(bad, labels)
    with pytest.raises(ValueError, match="length mismatch"):
        neural_collapse(feats, labels[:-1])
    with pytest.raises(ValueError, match="single class"):
        neural_collapse(feats, torch.zeros_like(labels))
    with pytest.raises(ValueError, match="labels"):
        neural_collapse(feats, labels.float())
    with pytest.raises(ValueError, match="weight"):
        neural_collapse(feats, labels, torch.randn(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="weight"):
        neural_collapse(feats, labels, torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="bias"):
        neural_collapse(feats, labels, None, torch.zeros(3))
    with pytest.raises(ValueError, match="bias"):
        neural_collapse(feats, labels, torch.randn(3, 4), torch.zeros(4))
    with pytest.raises(ValueError, match="global_mean"):
        neural_collapse(feats, labels, global_mean="median")


def _toy_mixup(noise: float):
    """Classifier rows = orthonormal e_0..e_2, class means s * w_c, mu_G = 0 and features of
    mixes equal to lam * mu_a + (1 - lam) * mu_b + noise * e_5 (d = 8)."""
    d, s = 8, 2.0
    w = torch.eye(d, dtype=torch.float64)[:3]
    g = torch.Generator().manual_seed(15)
    n = 400
    lam = torch.rand(n, generator=g, dtype=torch.float64)
    la = torch.randint(0, 3, (n,), generator=g)
    lb = torch.randint(0, 3, (n,), generator=g)
    mu = s * w
    h = lam[:, None] * mu[la] + (1 - lam[:, None]) * mu[lb]
    h = h + noise * torch.eye(d, dtype=torch.float64)[5]
    return h, lam, la, lb, w, torch.zeros(d, dtype=torch.float64), s


def test_mixup_geometry_toy_in_plane() -> None:
    h, lam, la, lb, w, mu_g, s = _toy_mixup(noise=0.0)
    res = mixup_geometry(h, lam, la, lb, w, None, mu_g, bins=10)
    same = la == lb
    assert res["num_same_class"] == int(same.sum())
    assert res["num_different_class"] == int((~same).sum())
    # same-class mixes sit on w_a: cos = 1 in every non-empty bin
    filled = res["same_class_count"] > 0
    assert np.allclose(res["same_class_cos"][filled], 1.0)
    assert res["same_class_cos_mean"] == pytest.approx(1.0)
    # different-class margin = s * (2 lam - 1): linear, zero at lam = 0.5
    assert res["margin_zero_crossing"] == pytest.approx(0.5, abs=1e-12)
    diff = ~same
    bin_idx = (lam * 10).floor().long().clamp(0, 9)
    for k in range(10):
        sel = diff & (bin_idx == k)
        if sel.any():
            assert res["margin_mean"][k] == pytest.approx(float((s * (2 * lam[sel] - 1)).mean()))
    assert np.allclose(res["off_plane_share"][res["different_class_count"] > 0], 0.0, atol=1e-24)
    assert res["bin_edges"].tolist() == pytest.approx(np.linspace(0, 1, 11).tolist())


def test_mixup_geometry_toy_off_plane_and_bias() -> None:
    c = 0.5
    h, lam, la, lb, w, mu_g, s = _toy_mixup(noise=c)
    bias = torch.tensor([0.3, -0.2, 0.0], dtype=torch.float64)
    res = mixup_geometry(h, lam, la, lb, w, bias, mu_g, bins=4)
    diff = la != lb
    in_plane = (s * lam[diff]) ** 2 + (s * (1 - lam[diff])) ** 2
    expected = c**2 / (in_plane + c**2)
    assert res["off_plane_share_mean"] == pytest.approx(float(expected.mean()))
    # the bias shifts the margin: b_a - b_b + s (2 lam - 1) = 0
    margins = s * (2 * lam[diff] - 1) + bias[la[diff]] - bias[lb[diff]]
    total = np.nansum(res["margin_mean"] * res["different_class_count"])
    assert total == pytest.approx(float(margins.sum()))
    # same-class cos with the off-plane component: s / sqrt(s^2 + c^2)
    assert res["same_class_cos_mean"] == pytest.approx(s / math.sqrt(s**2 + c**2))


def test_mixup_geometry_bad_input() -> None:
    h, lam, la, lb, w, mu_g, _ = _toy_mixup(noise=0.0)
    with pytest.raises(ValueError, match="lam"):
        mixup_geometry(h, lam * 2, la, lb, w, None, mu_g)
    with pytest.raises(ValueError, match="length mismatch"):
        mixup_geometry(h, lam[:-1], la, lb, w, None, mu_g)
    with pytest.raises(ValueError, match="global_mean"):
        mixup_geometry(h, lam, la, lb, w, None, mu_g[:3])
    with pytest.raises(ValueError, match="bins"):
        mixup_geometry(h, lam, la, lb, w, None, mu_g, bins=0)
    with pytest.raises(ValueError, match="weight"):
        mixup_geometry(h, lam, la, lb, w[:2], None, mu_g)


def test_three_class_projection_of_etf_is_equilateral(tmp_path) -> None:
    means = _etf(3, 6, seed=16)
    coords = three_class_projection(means, means, (0, 1, 2), torch.zeros(6, dtype=torch.float64))
    dists = torch.pdist(coords)
    assert torch.allclose(dists, dists[0].expand(3))
    assert torch.allclose(coords.norm(dim=1), torch.ones(3, dtype=torch.float64))
    out = plot_mixup_projection(coords, torch.tensor([0.0, 0.5, 1.0]), tmp_path / "proj.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
