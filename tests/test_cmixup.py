"""C-Mixup (Yao et al. 2022, docs/methods.md §3): probabilities, limits, window sampler, mix,
and the one Beta sampler (contrastmix.mixing.beta)."""

from __future__ import annotations

import math

import pytest
import torch

from contrastmix.mixing.beta import sample_beta, sample_lambda
from contrastmix.mixing.cmixup import (
    CMixupSampler,
    cmixup_partners,
    cmixup_probabilities,
    mix,
)


def _labels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 10


def _brute_probabilities(y: torch.Tensor, sigma: float, exclude_self: bool) -> torch.Tensor:
    n = y.shape[0]
    p = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        w = [
            0.0 if (exclude_self and j == i)
            else math.exp(-float(((y[i] - y[j]) ** 2).sum()) / (2 * sigma**2))
            for j in range(n)
        ]
        for j in range(n):
            p[i, j] = w[j] / sum(w)
    return p


@pytest.mark.parametrize("exclude_self", [False, True])
def test_probabilities_match_definition_and_rows_sum_to_one(exclude_self):
    y = _labels(9)
    p = cmixup_probabilities(y, 1.5, exclude_self=exclude_self)
    torch.testing.assert_close(p, _brute_probabilities(y[:, None], 1.5, exclude_self))
    torch.testing.assert_close(p.sum(1), torch.ones(9, dtype=torch.float64))
    if exclude_self:
        assert (p.diagonal() == 0).all()
    # Vector labels use the Euclidean distance.
    y2 = torch.stack([_labels(7, 1), _labels(7, 2)], dim=1)
    torch.testing.assert_close(cmixup_probabilities(y2, 3.0), _brute_probabilities(y2, 3.0, False))


def test_limits_and_shift_invariance():
    y = _labels(12)
    big = cmixup_probabilities(y, 1e6)
    torch.testing.assert_close(big, torch.full((12, 12), 1 / 12, dtype=torch.float64))
    small = cmixup_probabilities(y, 1e-6)
    torch.testing.assert_close(small, torch.eye(12, dtype=torch.float64))
    # sigma -> 0 with exclude_self: the nearest other label, no NaN.
    nn_p = cmixup_probabilities(y, 1e-9, exclude_self=True)
    assert torch.isfinite(nn_p).all()
    d = (y[:, None] - y[None]).abs().fill_diagonal_(math.inf)
    assert torch.equal(nn_p.argmax(1), d.argmin(1))
    torch.testing.assert_close(cmixup_probabilities(y + 1234.5, 0.7), cmixup_probabilities(y, 0.7))
    # Sampling limits.
    g = torch.Generator().manual_seed(0)
    assert torch.equal(cmixup_partners(y, 1e-6, generator=g), torch.arange(12))
    assert torch.equal(cmixup_partners(y, 1e-6, window=4, generator=g), torch.arange(12))
    uniform = CMixupSampler(y, 1e6).sample(torch.arange(12).repeat(400), generator=g)
    freq = torch.bincount(uniform, minlength=12).double() / uniform.numel()
    assert (freq - 1 / 12).abs().max() < 0.02


@pytest.mark.parametrize("exclude_self", [False, True])
def test_window_is_exact_when_it_covers_everything(exclude_self):
    y = _labels(15, 3)
    sampler = CMixupSampler(y, 2.0, window=15, exclude_self=exclude_self)
    cand, prob = sampler.window_candidates()
    dense = torch.zeros(15, 15, dtype=torch.float64)
    dense.scatter_(1, cand, prob)
    torch.testing.assert_close(dense, cmixup_probabilities(y, 2.0, exclude_self=exclude_self))


def test_window_holds_the_k_nearest_labels():
    y = torch.cat([_labels(40, 4), torch.tensor([5.0, 5.0, 5.0])])  # with ties
    k = 7
    sampler = CMixupSampler(y, 1.0, window=k)
    cand, prob = sampler.window_candidates()
    torch.testing.assert_close(prob.sum(1), torch.ones(43, dtype=torch.float64))
    for i in range(43):
        d = (y - y[i]).abs()
        kth = d.sort().values[k - 1]
        got = d[cand[i]]
        assert got.max() <= kth + 1e-12  # no candidate farther than the k-th nearest
        assert len(set(cand[i].tolist())) == k
        # Within the window the probabilities are the restricted softmax.
        w = torch.exp(-got**2 / 2)
        torch.testing.assert_close(prob[i], w / w.sum())


@pytest.mark.parametrize("window", [None, 9])
def test_sampling_frequencies_follow_probabilities(window):
    y = torch.tensor([0.0, 0.3, 1.0, 1.2, 2.0, 3.5, 3.6, 5.0, 7.0], dtype=torch.float64)
    sampler = CMixupSampler(y, 1.0, window=window, chunk_rows=1000)
    g = torch.Generator().manual_seed(1)
    draws = sampler.sample(torch.arange(9).repeat(3000), generator=g).view(3000, 9)
    p = cmixup_probabilities(y, 1.0)
    for i in range(9):
        freq = torch.bincount(draws[:, i], minlength=9).double() / 3000
        assert (freq - p[i]).abs().max() < 0.04


def test_sampler_indices_exclude_self_and_reproducibility():
    y = _labels(50, 5)
    for window in (None, 5):
        sampler = CMixupSampler(y, 0.01, window=window, exclude_self=True)
        idx = torch.tensor([3, 7, 7, 49])
        j1 = sampler.sample(idx, generator=torch.Generator().manual_seed(3))
        j2 = sampler.sample(idx, generator=torch.Generator().manual_seed(3))
        assert torch.equal(j1, j2)
        assert (j1 != idx).all()
        d = (y[idx, None] - y[None]).abs()
        d[torch.arange(4), idx] = math.inf
        assert torch.equal(j1, d.argmin(1))  # tiny sigma: the nearest other label


def test_large_n_window_runs_without_dense_matrix():
    y = _labels(200_000, 6)
    sampler = CMixupSampler(y, 0.05, window=32)
    j = sampler.sample(generator=torch.Generator().manual_seed(0))
    assert j.shape == (200_000,)
    assert (y[j] - y).abs().max() < 1.0  # partners come from the label neighbourhood


def test_mix_values_and_per_sample_lambda():
    x = torch.arange(12.0).view(4, 3)
    y = torch.tensor([0.0, 1.0, 2.0, 3.0])
    partners = torch.tensor([1, 0, 3, 2])
    xm, ym = mix(x, y, partners, 1.0)
    assert torch.equal(xm, x) and torch.equal(ym, y)
    lam = torch.tensor([0.5, 0.25, 1.0, 0.0])
    xm, ym = mix(x, y, partners, lam)
    torch.testing.assert_close(xm[0], (x[0] + x[1]) / 2)
    torch.testing.assert_close(xm[1], 0.25 * x[1] + 0.75 * x[0])
    torch.testing.assert_close(xm[3], x[2])
    torch.testing.assert_close(ym, torch.tensor([0.5, 0.25, 2.0, 2.0]))
    img = torch.randn(4, 1, 5, 5)
    xm, _ = mix(img, torch.tensor([0, 1, 2, 3]), partners, lam)  # integer y becomes float
    torch.testing.assert_close(xm[1], 0.25 * img[1] + 0.75 * img[0])


def test_sample_beta_moments_and_reproducibility():
    for a, b in [(2.0, 8.0), (2.0, 2.0), (0.15, 0.15), (0.5, 3.0)]:
        g = torch.Generator().manual_seed(0)
        s = sample_beta(20_000, a, b, generator=g, dtype=torch.float64)
        assert ((s >= 0) & (s <= 1)).all()
        mean = a / (a + b)
        var = a * b / ((a + b) ** 2 * (a + b + 1))
        assert abs(s.mean().item() - mean) < 0.01
        assert abs(s.var().item() - var) < 0.01
        s2 = sample_beta(20_000, a, b, generator=torch.Generator().manual_seed(0),
                         dtype=torch.float64)
        assert torch.equal(s, s2)
    one = sample_lambda(6, generator=torch.Generator().manual_seed(1))
    assert (one == one[0]).all()
    per = sample_lambda(6, per_sample=True, generator=torch.Generator().manual_seed(1))
    assert len(set(per.tolist())) == 6


def test_sample_beta_is_the_one_sampler():
    import contrastmix.mixing as mixing
    from contrastmix.mixing import beta as beta_mod

    assert mixing.sample_beta is beta_mod.sample_beta and mixing.sample_lambda is sample_lambda
    # symmetric by default: Beta(alpha, alpha), the same stream as the explicit call
    a = sample_beta(50, 0.5, generator=torch.Generator().manual_seed(3))
    b = sample_beta(50, 0.5, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # a 0-d draw is the first draw of a [1] draw
    one = sample_beta((), 2.0, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    first = sample_beta(1, 2.0, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert one.shape == () and float(one) == float(first[0])
    assert sample_beta((2, 0, 3), 1.0).shape == (2, 0, 3)
    # the CPU stream does not depend on the number of threads
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        s1 = sample_beta(5000, 0.15, generator=torch.Generator().manual_seed(5))
        torch.set_num_threads(max(2, threads))
        s2 = sample_beta(5000, 0.15, generator=torch.Generator().manual_seed(5))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(s1, s2)


def test_sample_beta_tiny_concentrations_stay_accurate():
    # Beta(a, a) with a = 0.01 puts almost all mass at 0 and 1, half each; Gamma(0.01) draws
    # underflow without the log-space boost (0 / 0)
    a = 0.01
    s = sample_beta(200_000, a, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.isfinite(s).all() and ((s >= 0) & (s <= 1)).all()
    assert abs(float(s.mean()) - 0.5) < 0.01
    assert abs(float(s.var()) - 1.0 / (4 * (2 * a + 1))) < 0.005
    # P(0.01 < X < 0.99) ~ 2 a ln(99) / 2 ~ 0.046 (density ~ a / (2 x (1 - x)) inside)
    inside = float(((s > 0.01) & (s < 0.99)).double().mean())
    assert inside == pytest.approx(a * math.log(99.0), abs=0.006)
    # very skewed: Beta(0.05, 5) has mean 0.05 / 5.05
    t = sample_beta(100_000, 0.05, 5.0, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    assert float(t.mean()) == pytest.approx(0.05 / 5.05, rel=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sample_beta_on_a_device_generator():
    g = torch.Generator("cuda").manual_seed(0)
    s = sample_beta(10_000, 2.0, 8.0, generator=g, dtype=torch.float64)
    assert s.device.type == "cuda" and bool(((s >= 0) & (s <= 1)).all())
    again = sample_beta(10_000, 2.0, 8.0, generator=torch.Generator("cuda").manual_seed(0),
                        dtype=torch.float64)
    assert torch.equal(s, again)
    assert abs(float(s.mean()) - 0.2) < 0.01
    # CPU generator, result on the device
    c = sample_beta(8, 2.0, generator=torch.Generator().manual_seed(1), device="cuda")
    assert c.device.type == "cuda"
    assert torch.equal(c.cpu(), sample_beta(8, 2.0, generator=torch.Generator().manual_seed(1)))


def test_bad_input_raises_clear_errors():
    y = _labels(5)
    with pytest.raises(ValueError, match="sigma"):
        cmixup_probabilities(y, 0.0)
    with pytest.raises(ValueError, match="labels"):
        cmixup_probabilities(torch.tensor([0.0, float("nan")]), 1.0)
    with pytest.raises(ValueError, match="labels"):
        cmixup_partners(torch.zeros(2, 2, 2), 1.0)
    with pytest.raises(ValueError, match="window"):
        cmixup_partners(torch.zeros(5, 2), 1.0, window=3)
    with pytest.raises(ValueError, match="window"):
        cmixup_partners(y, 1.0, window=1, exclude_self=True)
    with pytest.raises(ValueError, match="exclude_self"):
        cmixup_partners(y[:1], 1.0, exclude_self=True)
    with pytest.raises(ValueError, match="indices"):
        CMixupSampler(y, 1.0).sample(torch.tensor([5]))
    with pytest.raises(ValueError, match="length mismatch"):
        mix(torch.zeros(4, 2), torch.zeros(3), torch.zeros(4, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="lam"):
        mix(torch.zeros(4, 2), torch.zeros(4), torch.zeros(4, dtype=torch.long), 1.5)
    with pytest.raises(ValueError, match="partners"):
        mix(torch.zeros(4, 2), torch.zeros(4), torch.tensor([0, 1, 2, 4]), 0.5)
    with pytest.raises(ValueError, match="alpha"):
        sample_beta(3, 0.0, 1.0)
    with pytest.raises(ValueError, match="beta"):
        sample_beta(3, 1.0, float("inf"))
    with pytest.raises(ValueError, match="shape"):
        sample_beta((2, -1), 1.0)
    with pytest.raises(ValueError, match="`n`"):
        sample_lambda(-1)
