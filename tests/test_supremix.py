"""SupReMix (docs/methods.md §2): brute-force loop reference, SupCon reduction, invariances,
edges."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from contrastmix.losses import supremix as supremix_module
from contrastmix.losses.supcon import supcon_loss
from contrastmix.losses.supremix import (
    SupReMixLoss,
    _hard_positive_stats,
    hard_positive_pairs,
    supremix_loss,
)
from contrastmix.mixing.beta import sample_beta


@pytest.fixture(params=[True, False], ids=["host-chunks", "device-chunks"])
def chunking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both hard-positive chunkings: label-sorted windows (CPU default) and the fixed masked
    blocks an accelerator runs (no host read of chunk bounds)."""
    monkeypatch.setattr(supremix_module, "HOST_CHUNKS", request.param)


def _feats(b: int, v: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, v, d, generator=g, dtype=dtype), dim=-1)


def _brute_supremix(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    tau: float,
    window: float,
    a_neg: torch.Tensor | None,
    hard_negatives: bool,
    hard_positives: bool,
    weighting: bool,
    detach: bool = True,
) -> torch.Tensor:
    """docs/methods.md §2 with explicit loops and *materialised* mixtures (detached unless told)."""
    b, v, _ = features.shape
    z = [features[s, w] for w in range(v) for s in range(b)]  # view-major
    y = [float(labels[s]) for w in range(v) for s in range(b)]
    n = len(z)

    def const(t: torch.Tensor) -> torch.Tensor:
        return t.detach() if detach else t

    losses = []
    for i in range(n):
        cands = []  # (logit, weight, is_positive)
        for c in range(n):
            if c != i:
                w = 1 + abs(y[i] - y[c]) if weighting else 1.0
                cands.append((z[i] @ z[c] / tau, w, y[c] == y[i]))
        if hard_negatives:
            for k in range(n):
                if y[k] != y[i]:
                    a = float(a_neg[i, k])
                    m = const(a * z[i] + (1 - a) * z[k])
                    lab = a * y[i] + (1 - a) * y[k]
                    w = 1 + abs(y[i] - lab) if weighting else 1.0
                    cands.append((z[i] @ m / tau, w, False))
        if hard_positives:
            for j in range(n):
                for k in range(n):
                    if y[j] < y[i] < y[k] and y[i] - y[j] < window and y[k] - y[i] < window:
                        a = (y[k] - y[i]) / (y[k] - y[j])
                        m = const(a * z[j] + (1 - a) * z[k])
                        lab = a * y[j] + (1 - a) * y[k]
                        assert abs(lab - y[i]) < 1e-12
                        w = 1 + abs(y[i] - lab) if weighting else 1.0
                        cands.append((z[i] @ m / tau, w, True))
        pos = [c for c in cands if c[2]]
        if not pos:
            continue
        denom = sum(w * torch.exp(logit) for logit, w, _ in cands)
        losses.append(-sum(logit - torch.log(denom) for logit, _, _ in pos) / len(pos))
    return sum(losses) / len(losses)


LABEL_SETS = [
    [1.0, 2.0, 2.0, 3.5],  # ties: real positives and bracketing pairs
    [0.0, 0.75, 1.5, 4.0],  # distinct, some outside a finite window
]


@pytest.mark.parametrize("labels", LABEL_SETS)
@pytest.mark.parametrize("window", [math.inf, 1.6])
@pytest.mark.parametrize("switches", list(itertools.product([False, True], repeat=3)))
@pytest.mark.usefixtures("chunking")
def test_matches_brute_force_value_and_gradient(labels, window, switches):
    hn, hp, w = switches
    feats = _feats(4, 2, 5, seed=11).requires_grad_(True)
    y = torch.tensor(labels, dtype=torch.float64)
    a_neg = sample_beta((8, 8), 2.0, 8.0, generator=torch.Generator().manual_seed(1),
                        dtype=torch.float64)
    loss = supremix_loss(
        feats, y, temperature=0.5, window=window, hard_negatives=hn, hard_positives=hp,
        distance_weighting=w, negative_coefficients=a_neg,
    )
    (g,) = torch.autograd.grad(loss, feats)
    fr = feats.detach().clone().requires_grad_(True)
    ref = _brute_supremix(fr, y, tau=0.5, window=window, a_neg=a_neg, hard_negatives=hn,
                          hard_positives=hp, weighting=w)
    (g_ref,) = torch.autograd.grad(ref, fr)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-10)


def test_mixtures_carry_no_gradient():
    """The gradient matches detached mixtures and differs from non-detached ones."""
    feats = _feats(4, 2, 5, seed=12).requires_grad_(True)
    y = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    a_neg = torch.full((8, 8), 0.3, dtype=torch.float64)
    loss = supremix_loss(feats, y, negative_coefficients=a_neg)
    (g,) = torch.autograd.grad(loss, feats)
    grads = {}
    for detach in (True, False):
        fr = feats.detach().clone().requires_grad_(True)
        ref = _brute_supremix(fr, y, tau=0.5, window=math.inf, a_neg=a_neg, hard_negatives=True,
                              hard_positives=True, weighting=True, detach=detach)
        (grads[detach],) = torch.autograd.grad(ref, fr)
    torch.testing.assert_close(g, grads[True], rtol=1e-8, atol=1e-10)
    assert (g - grads[False]).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_switches_off_equals_supcon_exactly(dtype):
    feats = _feats(16, 2, 8, seed=13, dtype=dtype)
    y = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(0)).to(dtype)
    ours = SupReMixLoss(0.3, hard_negatives=False, hard_positives=False,
                        distance_weighting=False)(feats, y)
    torch.testing.assert_close(ours, supcon_loss(feats, y, 0.3), rtol=0, atol=0)


def test_hard_positive_labels_equal_the_anchor():
    y = torch.tensor([0.0, 1.0, 1.0, 2.5, 4.0, 4.5, 7.0, 1.0])
    for window in (math.inf, 2.0):
        i, j, k, a = hard_positive_pairs(y, window)
        assert i.numel() > 0
        yd = y.double()
        torch.testing.assert_close(a * yd[j] + (1 - a) * yd[k], yd[i], rtol=0, atol=1e-12)
        assert (yd[j] < yd[i]).all() and (yd[i] < yd[k]).all()
        assert ((yd[i] - yd[j]) < window).all() and ((yd[k] - yd[i]) < window).all()
        assert ((a > 0) & (a < 1)).all()


@pytest.mark.parametrize("chunk", [1, 37, 2**30])
@pytest.mark.usefixtures("chunking")
def test_chunked_statistics_match_explicit_pairs(chunk):
    gen = torch.Generator().manual_seed(3)
    y = torch.randint(0, 6, (20,), generator=gen).double() * 0.5
    z = F.normalize(torch.randn(20, 4, generator=gen, dtype=torch.float64), dim=1)
    gd = z @ z.T
    tau = 0.7
    for window in (math.inf, 1.2):
        lse, jac, coef, count = _hard_positive_stats(gd, y, window, tau, chunk)
        i, j, k, a = hard_positive_pairs(y, window)
        t = (a * gd[i, j] + (1 - a) * gd[i, k]) / tau
        ref_count = torch.bincount(i, minlength=20)
        assert torch.equal(count, ref_count)
        for r in range(20):
            sel = i == r
            if ref_count[r] == 0:
                assert lse[r] == -math.inf and (jac[r] == 0).all() and (coef[r] == 0).all()
                continue
            torch.testing.assert_close(lse[r], torch.logsumexp(t[sel], 0))
            torch.testing.assert_close((gd[r] * coef[r]).sum() / tau, t[sel].sum())
            # Jacobian of the log-sum-exp w.r.t. the Gram row, by autograd.
            row = gd[r].clone().requires_grad_(True)
            tt = (a[sel] * row[j[sel]] + (1 - a[sel]) * row[k[sel]]) / tau
            (gr,) = torch.autograd.grad(torch.logsumexp(tt, 0), row)
            torch.testing.assert_close(jac[r], gr)


@pytest.mark.usefixtures("chunking")
def test_chunk_budget_does_not_change_loss_or_gradient():
    feats = _feats(24, 2, 8, seed=14, dtype=torch.float32)
    y = torch.randint(0, 8, (24,), generator=torch.Generator().manual_seed(1)).float()
    out = []
    for chunk in (1, 500, 2**24):
        f = feats.clone().requires_grad_(True)
        loss = supremix_loss(f, y, window=3.0, chunk_elements=chunk,
                             generator=torch.Generator().manual_seed(5))
        loss.backward()
        out.append((loss.detach(), f.grad))
    for loss, grad in out[1:]:
        torch.testing.assert_close(loss, out[0][0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad, out[0][1], rtol=1e-5, atol=1e-6)


def test_weighted_loss_is_at_least_unweighted():
    for seed in range(5):
        feats = _feats(12, 2, 6, seed=seed)
        y = torch.rand(12, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 9
        vals = []
        for w in (False, True):
            vals.append(supremix_loss(feats, y, distance_weighting=w, window=4.0,
                                      generator=torch.Generator().manual_seed(seed)))
        assert vals[1] >= vals[0]
        assert vals[1] > vals[0] + 1e-6  # labels differ, so weights > 1 somewhere


def test_invariant_to_label_shift():
    feats = _feats(10, 2, 6, seed=21)
    y = torch.randint(0, 20, (10,), generator=torch.Generator().manual_seed(2)).double() * 0.5
    a = supremix_loss(feats, y, window=3.0, generator=torch.Generator().manual_seed(9))
    b = supremix_loss(feats, y + 1000.0, window=3.0, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_invariant_to_batch_permutation_with_fixed_draws():
    bsz, v = 9, 2
    feats = _feats(bsz, v, 6, seed=22).requires_grad_(True)
    y = torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0, 0.0, 4.5, 1.0, 3.5], dtype=torch.float64)
    a_neg = sample_beta((bsz * v, bsz * v), 2.0, 8.0, generator=torch.Generator().manual_seed(4),
                        dtype=torch.float64)
    perm = torch.randperm(bsz, generator=torch.Generator().manual_seed(0))
    idx = torch.cat([w * bsz + perm for w in range(v)])  # view-major positions
    loss = supremix_loss(feats, y, window=2.5, negative_coefficients=a_neg)
    (g,) = torch.autograd.grad(loss, feats)
    fp = feats.detach()[perm].clone().requires_grad_(True)
    loss_p = supremix_loss(fp, y[perm], window=2.5, negative_coefficients=a_neg[idx][:, idx])
    (gp,) = torch.autograd.grad(loss_p, fp)
    torch.testing.assert_close(loss, loss_p, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g[perm], gp, rtol=1e-10, atol=1e-12)


def test_generator_reproducibility():
    feats = _feats(8, 2, 4, seed=23)
    y = torch.arange(8.0, dtype=torch.float64)
    l1 = supremix_loss(feats, y, generator=torch.Generator().manual_seed(1))
    l2 = supremix_loss(feats, y, generator=torch.Generator().manual_seed(1))
    l3 = supremix_loss(feats, y, generator=torch.Generator().manual_seed(2))
    assert l1 == l2 and l1 != l3


def _weighted_supcon(feats, y):
    return supremix_loss(feats, y, hard_negatives=False, hard_positives=False)


def _check_finite_grad(loss, feats):
    (g,) = torch.autograd.grad(loss, feats)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    return g


@pytest.mark.parametrize(
    "bsz,v,labels",
    [
        (1, 2, [4.0]),  # one sample
        (4, 2, [2.0, 2.0, 2.0, 2.0]),  # all labels equal
        (1, 3, [0.5]),
    ],
)
def test_degenerate_batches_reduce_to_weighted_supcon(bsz, v, labels):
    feats = _feats(bsz, v, 5, seed=24).requires_grad_(True)
    y = torch.tensor(labels, dtype=torch.float64)
    loss = supremix_loss(feats, y, window=1.0, generator=torch.Generator().manual_seed(0))
    g = _check_finite_grad(loss, feats)
    ref = _weighted_supcon(feats, y)
    g_ref = _check_finite_grad(ref, feats)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_ref)
    if len(set(labels)) == 1:  # all weights are 1: plain SupCon
        torch.testing.assert_close(loss, supcon_loss(feats, y, 0.5))


def test_no_bracketing_pair_gives_weighted_supcon():
    feats = _feats(4, 2, 5, seed=25).requires_grad_(True)
    y = torch.tensor([0.0, 0.0, 3.0, 3.0], dtype=torch.float64)  # two labels: nothing between
    assert hard_positive_pairs(y.repeat(2))[0].numel() == 0
    loss = supremix_loss(feats, y, hard_negatives=False)
    g = _check_finite_grad(loss, feats)
    ref = _weighted_supcon(feats, y)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, _check_finite_grad(ref, feats))
    # With hard negatives on it is still finite and larger (more denominator terms).
    full = supremix_loss(feats, y, generator=torch.Generator().manual_seed(0))
    _check_finite_grad(full, feats)
    assert full > ref


def test_no_positive_at_all_is_zero_with_zero_gradient():
    feats = _feats(1, 1, 4, seed=26).requires_grad_(True)
    loss = supremix_loss(feats, torch.tensor([1.0]))
    g = _check_finite_grad(loss, feats)
    assert loss.item() == 0.0 and (g == 0).all()
    # One view per sample and distinct labels: the end anchors have no positive at all,
    # the middle one only hard positives.
    feats = _feats(3, 1, 4, seed=27).requires_grad_(True)
    y = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    loss = supremix_loss(feats, y, negative_coefficients=torch.full((3, 3), 0.2,
                                                                   dtype=torch.float64))
    _check_finite_grad(loss, feats)
    fr = feats.detach().clone().requires_grad_(True)
    ref = _brute_supremix(fr, y, tau=0.5, window=math.inf, a_neg=torch.full((3, 3), 0.2),
                          hard_negatives=True, hard_positives=True, weighting=True)
    torch.testing.assert_close(loss, ref)


def test_autocast_bf16_runs_in_fp32_with_finite_gradient():
    feats = _feats(16, 2, 8, seed=28, dtype=torch.float32)
    y = torch.randint(0, 6, (16,), generator=torch.Generator().manual_seed(0)).float()
    ref = supremix_loss(feats, y, generator=torch.Generator().manual_seed(0))
    f16 = feats.bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = supremix_loss(f16, y, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32
    out.backward()
    assert torch.isfinite(f16.grad.float()).all()
    assert math.isclose(out.item(), ref.item(), rel_tol=2e-2)


def test_bad_input_raises_clear_errors():
    feats = _feats(4, 2, 3)
    y = torch.arange(4.0)
    with pytest.raises(ValueError, match="labels"):
        supremix_loss(feats, torch.arange(5.0))
    with pytest.raises(ValueError, match="labels"):
        supremix_loss(feats, torch.tensor([0.0, float("inf"), 1.0, 2.0]))
    with pytest.raises(ValueError, match="labels"):
        supremix_loss(feats, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="features"):
        supremix_loss(feats[:, 0], y)
    with pytest.raises(ValueError, match="features"):
        supremix_loss(feats[None], y)
    with pytest.raises(ValueError, match="negative_coefficients"):
        supremix_loss(feats, y, negative_coefficients=torch.zeros(4, 4))
    with pytest.raises(ValueError, match="negative_coefficients"):
        supremix_loss(feats, y, negative_coefficients=torch.full((8, 8), 1.5))
    with pytest.raises(ValueError, match="window"):
        SupReMixLoss(window=0.0)
    with pytest.raises(ValueError, match="window"):
        SupReMixLoss(window=float("nan"))
    with pytest.raises(ValueError, match="temperature"):
        SupReMixLoss(temperature=-1.0)
    with pytest.raises(ValueError, match="negative_alpha"):
        SupReMixLoss(negative_alpha=(2.0, 0.0))
    with pytest.raises(ValueError, match="negative_alpha"):
        SupReMixLoss(negative_alpha=(2.0,))
