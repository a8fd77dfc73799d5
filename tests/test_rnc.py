"""Rank-N-Contrast (Zha et al. 2023): brute-force loop reference, invariances, edge cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from contrastmix.losses.rnc import RnCLoss, rnc_loss


def _feats(b: int, v: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, v, d, generator=g, dtype=dtype), dim=-1)


def _brute_rnc(features: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """The paper's definition with explicit loops over (i, j) and the negative set."""
    b, v, _ = features.shape
    z = [features[s, w] for w in range(v) for s in range(b)]
    y = [float(labels[s]) for w in range(v) for s in range(b)]
    n = len(z)

    def s(i: int, j: int) -> torch.Tensor:
        return -torch.linalg.vector_norm(z[i] - z[j]) / tau

    total, count = 0.0, 0
    for i in range(n):
        for j in range(n):
            if j == i:
                continue
            negs = [k for k in range(n) if k != i and abs(y[i] - y[k]) >= abs(y[i] - y[j])]
            denom = sum(torch.exp(s(i, k)) for k in negs)
            total = total - torch.log(torch.exp(s(i, j)) / denom)
            count += 1
    return total / count


def _official_style_rnc(features: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """The authors' O(N^3) vectorised loop (RnC repository ``loss.py``), as a second reference."""
    z = torch.cat(torch.unbind(features, dim=1), dim=0)
    y = labels.repeat(features.shape[1]).double()[:, None]
    label_diffs = (y[:, None, :] - y[None, :, :]).abs().sum(-1)
    logits = -(z[:, None, :] - z[None, :, :]).norm(2, dim=-1) / tau
    logits = logits - logits.max(dim=1, keepdim=True)[0].detach()
    exp_logits = logits.exp()
    n = logits.shape[0]
    off = ~torch.eye(n, dtype=torch.bool)
    logits = logits.masked_select(off).view(n, n - 1)
    exp_logits = exp_logits.masked_select(off).view(n, n - 1)
    label_diffs = label_diffs.masked_select(off).view(n, n - 1)
    loss = 0.0
    for k in range(n - 1):
        pos_logits = logits[:, k]
        pos_label_diffs = label_diffs[:, k]
        neg_mask = (label_diffs >= pos_label_diffs.view(-1, 1)).to(logits.dtype)
        pos_log_probs = pos_logits - torch.log((neg_mask * exp_logits).sum(dim=-1))
        loss = loss - (pos_log_probs / (n * (n - 1))).sum()
    return loss


@pytest.mark.parametrize(
    "labels", [[0.0, 1.0, 3.0, 1.0, 2.5], [1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 4.0, 1.0, 3.0]]
)
@pytest.mark.parametrize("tau", [2.0, 0.3])
def test_matches_brute_force_value_and_gradient(labels, tau):
    feats = _feats(5, 2, 4, seed=1).requires_grad_(True)
    y = torch.tensor(labels, dtype=torch.float64)
    loss = rnc_loss(feats, y, tau)
    (g,) = torch.autograd.grad(loss, feats)
    fr = feats.detach().clone().requires_grad_(True)
    ref = _brute_rnc(fr, y, tau)
    (g_ref,) = torch.autograd.grad(ref, fr)
    torch.testing.assert_close(loss, ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-8)


def test_matches_authors_vectorised_loop():
    feats = _feats(12, 2, 8, seed=2)
    y = torch.randint(0, 6, (12,), generator=torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(
        RnCLoss(2.0)(feats, y), _official_style_rnc(feats, y, 2.0), rtol=1e-9, atol=1e-10
    )


def test_invariant_to_label_shift_scale_and_batch_permutation():
    feats = _feats(10, 2, 6, seed=3)
    y = torch.randint(0, 7, (10,), generator=torch.Generator().manual_seed(1)).double()
    base = rnc_loss(feats, y)
    torch.testing.assert_close(rnc_loss(feats, y + 100.0), base)
    torch.testing.assert_close(rnc_loss(feats, 3.0 * y), base)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(rnc_loss(feats[perm], y[perm]), base)


def test_ordered_embedding_has_lower_loss_than_shuffled():
    # Points on a 1-D arc ordered like their labels vs the same points with shuffled labels.
    y = torch.arange(12, dtype=torch.float64)
    ang = y / 12 * 1.5
    z = torch.stack([ang.cos(), ang.sin()], dim=1)
    feats = torch.stack([z, z], dim=1)
    shuffled = y[torch.randperm(12, generator=torch.Generator().manual_seed(0))]
    assert rnc_loss(feats, y, 0.1) < rnc_loss(feats, shuffled, 0.1)


def test_coincident_embeddings_and_single_anchor_have_finite_gradients():
    # Identical views: zero distances off the diagonal.
    z = _feats(3, 1, 4, seed=4)
    feats = z.repeat(1, 2, 1).requires_grad_(True)
    loss = rnc_loss(feats, torch.tensor([0.0, 1.0, 2.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(feats.grad).all()
    one = _feats(1, 1, 4, seed=5).requires_grad_(True)
    loss = rnc_loss(one, torch.tensor([1.0]))
    loss.backward()
    assert loss.item() == 0.0 and (one.grad == 0).all()


def test_autocast_and_float32():
    feats = _feats(8, 2, 8, seed=6, dtype=torch.float32)
    y = torch.arange(8.0)
    ref = rnc_loss(feats.double(), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rnc_loss(feats, y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)


def test_bad_input_raises_clear_errors():
    feats = _feats(4, 2, 3)
    with pytest.raises(ValueError, match="labels"):
        rnc_loss(feats, torch.zeros(3))
    with pytest.raises(ValueError, match="labels"):
        rnc_loss(feats, torch.tensor([0.0, float("nan"), 1.0, 2.0]))
    with pytest.raises(ValueError, match="features"):
        rnc_loss(feats[:, 0], torch.zeros(4))
    with pytest.raises(ValueError, match="temperature"):
        RnCLoss(0.0)
