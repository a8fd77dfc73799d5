"""SupCon ("out" form, Khosla et al. 2020): brute-force reference, NT-Xent reduction, edge cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from contrastmix.losses.supcon import SupConLoss, flatten_views, supcon_loss


def _feats(b: int, v: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, v, d, generator=g, dtype=dtype), dim=-1)


def _brute_supcon(features: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Khosla eq. 2 with explicit loops over anchors, positives and denominators."""
    b, v, _ = features.shape
    zs = [features[s, w] for w in range(v) for s in range(b)]  # view-major
    ys = [float(labels[s]) for w in range(v) for s in range(b)]
    n = len(zs)
    terms = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and ys[p] == ys[i]]
        if not positives:
            continue
        denom = sum(torch.exp(zs[i] @ zs[a] / tau) for a in range(n) if a != i)
        li = sum(-torch.log(torch.exp(zs[i] @ zs[p] / tau) / denom) for p in positives)
        terms.append(li / len(positives))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("labels", [[0.0, 1.0, 0.0, 2.0, 1.0], [3.0, 3.0, 3.0, 3.0, 3.0]])
def test_matches_brute_force_value_and_gradient(labels):
    feats = _feats(5, 2, 6).requires_grad_(True)
    y = torch.tensor(labels, dtype=torch.float64)
    loss = supcon_loss(feats, y, temperature=0.3)
    (g,) = torch.autograd.grad(loss, feats)
    feats_ref = feats.detach().clone().requires_grad_(True)
    ref = _brute_supcon(feats_ref, y, 0.3)
    (g_ref,) = torch.autograd.grad(ref, feats_ref)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10)


def test_three_views_and_integer_class_labels():
    feats = _feats(4, 3, 5, seed=1)
    y = torch.tensor([2, 0, 2, 1])
    ref = _brute_supcon(feats, y.double(), 0.1)
    torch.testing.assert_close(SupConLoss(0.1)(feats, y), ref, rtol=1e-10, atol=1e-10)


def test_no_labels_equals_lightly_ntxent():
    from lightly.loss import NTXentLoss

    feats = _feats(6, 2, 8, seed=2, dtype=torch.float32)
    ours = supcon_loss(feats, None, temperature=0.5)
    ref = NTXentLoss(temperature=0.5)(feats[:, 0], feats[:, 1])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    # Unique labels are the same thing as no labels.
    torch.testing.assert_close(supcon_loss(feats, torch.arange(6.0), 0.5), ours)


def test_permutation_invariance():
    feats = _feats(6, 2, 4, seed=3)
    y = torch.tensor([0.5, 1.0, 0.5, 2.0, 1.0, 2.0], dtype=torch.float64)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    torch.testing.assert_close(supcon_loss(feats, y, 0.2), supcon_loss(feats[perm], y[perm], 0.2))


def test_anchor_without_positive_is_excluded():
    feats = _feats(3, 1, 4, seed=4)
    y = torch.tensor([1.0, 1.0, 7.0], dtype=torch.float64)  # sample 2 has no positive
    loss = supcon_loss(feats, y, 0.5)
    z = feats[:, 0]
    logits = z @ z.T / 0.5
    # Anchors 0 and 1: the single positive is each other.
    l0 = torch.logsumexp(logits[0, [1, 2]], 0) - logits[0, 1]
    l1 = torch.logsumexp(logits[1, [0, 2]], 0) - logits[1, 0]
    torch.testing.assert_close(loss, (l0 + l1) / 2)


@pytest.mark.parametrize("shape", [(1, 1, 4), (3, 1, 4)])
def test_no_positive_at_all_gives_zero_with_finite_gradient(shape):
    feats = _feats(*shape, seed=5).requires_grad_(True)
    y = torch.arange(float(shape[0]), dtype=torch.float64)
    loss = supcon_loss(feats, y, 0.1)
    loss.backward()
    assert loss.item() == 0.0
    assert feats.grad is not None and torch.isfinite(feats.grad).all()
    assert (feats.grad == 0).all()


def test_single_sample_two_views_finite():
    feats = _feats(1, 2, 4, seed=6).requires_grad_(True)
    loss = supcon_loss(feats, torch.tensor([3.0]), 0.1)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)  # log(e^s / e^s)
    assert torch.isfinite(feats.grad).all()


def test_autocast_runs_in_fp32():
    feats = _feats(4, 2, 8, seed=7, dtype=torch.float32)
    y = torch.tensor([0.0, 1.0, 0.0, 1.0])
    ref = supcon_loss(feats, y, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = supcon_loss(feats.bfloat16(), y, 0.1)
    assert out.dtype == torch.float32
    assert math.isclose(out.item(), ref.item(), rel_tol=2e-2)


def test_bad_input_raises_clear_errors():
    feats = _feats(4, 2, 3)
    y = torch.zeros(4)
    with pytest.raises(ValueError, match="features"):
        supcon_loss(feats[:, 0], y)
    with pytest.raises(ValueError, match="labels"):
        supcon_loss(feats, torch.zeros(5))
    with pytest.raises(ValueError, match="labels"):
        supcon_loss(feats, torch.tensor([0.0, float("nan"), 1.0, 2.0]))
    with pytest.raises(ValueError, match="labels"):
        supcon_loss(feats, torch.zeros(4, 1))
    with pytest.raises(ValueError, match="features"):
        supcon_loss(feats * 2, y)  # not unit norm
    bad = feats.clone()
    bad[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="features"):
        supcon_loss(bad, y)
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(temperature=0.0)
    with pytest.raises(ValueError, match="features"):
        flatten_views(torch.zeros(0, 2, 3), None)
