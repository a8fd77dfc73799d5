"""Tests of MoCHi (docs/methods.md §1): contrastmix.mixing.mochi and contrastmix.losses.mochi."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from contrastmix._counter_rng import counter_uniform, draw_seed
from contrastmix.losses.mochi import MoCHiLoss, mochi_loss
from contrastmix.losses.moco import moco_infonce
from contrastmix.mixing import mochi as mochi_mod
from contrastmix.mixing.mochi import mochi_draws, mochi_logits, mochi_negatives

D64 = torch.float64


def _unit(*shape: int, g: torch.Generator, dtype: torch.dtype = D64) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference_negatives(q, queue, draws):
    """Explicit-loop construction of h and h' from the draws (docs/methods.md §1 steps 2-3)."""
    b_size, s = draws.pos_i.shape
    s2 = draws.pos_k.shape[1]
    out = torch.zeros(b_size, s + s2, q.shape[1], dtype=q.dtype)
    for b in range(b_size):
        for r in range(s):
            a = float(draws.alpha[b, r])
            v = a * queue[draws.pos_i[b, r]] + (1 - a) * queue[draws.pos_j[b, r]]
            out[b, r] = v / v.norm()
        for r in range(s2):
            bt = float(draws.beta[b, r])
            v = bt * q[b] + (1 - bt) * queue[draws.pos_k[b, r]]
            out[b, s + r] = v / v.norm()
    return out


def _hard_set(q_b, queue, n, excluded=()):
    """Top-n queue rows of one query by an explicit sort (excluded rows removed first)."""
    scores = [(float(q_b @ queue[r]), r) for r in range(queue.shape[0]) if r not in excluded]
    scores.sort(key=lambda t: -t[0])
    return {r for _, r in scores[:n]}


def test_draws_follow_the_spec() -> None:
    g = _gen(0)
    q, queue = _unit(5, 8, g=g), _unit(40, 8, g=g)
    n_hard = 6
    dr = mochi_draws(q @ queue.T, n_hard, 300, 200, generator=_gen(1))
    assert dr.pos_i.shape == (5, 300) and dr.pos_k.shape == (5, 200)
    assert bool(((dr.alpha >= 0) & (dr.alpha < 1)).all())
    assert bool(((dr.beta >= 0) & (dr.beta < 0.5)).all())
    assert float(dr.beta.max()) > 0.4 and float(dr.alpha.max()) > 0.9  # not degenerate
    for b in range(5):
        hard = _hard_set(q[b], queue, n_hard)
        for pos in (dr.pos_i[b], dr.pos_j[b], dr.pos_k[b]):
            assert set(pos.tolist()) == hard  # every hard entry drawn (300 draws from 6)
    # same generator state -> same draws; another seed -> other draws
    dr2 = mochi_draws(q @ queue.T, n_hard, 300, 200, generator=_gen(1))
    dr3 = mochi_draws(q @ queue.T, n_hard, 300, 200, generator=_gen(2))
    assert all(
        torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
        for a, b in zip(dr, dr2, strict=True)
    )
    assert not torch.equal(dr.pos_i, dr3.pos_i)


def test_materialised_matches_explicit_loop_and_is_unit_norm() -> None:
    g = _gen(1)
    q, queue = _unit(4, 6, g=g), _unit(30, 6, g=g)
    # s > N is valid (draws with replacement); N > K is clamped to K
    for n_hard, s, s2 in [(5, 12, 3), (100, 4, 4), (30, 0, 5), (3, 7, 0)]:
        h = mochi_negatives(q, queue, n_hard, s, s2, generator=_gen(7))
        dr = mochi_draws(q @ queue.T, n_hard, s, s2, generator=_gen(7))
        assert h.shape == (4, s + s2, 6) and not h.requires_grad
        torch.testing.assert_close(h, _reference_negatives(q, queue, dr))
        torch.testing.assert_close(h.norm(dim=-1), torch.ones(4, s + s2, dtype=D64))


def test_n1_type1_is_hardest_negative() -> None:
    g = _gen(2)
    q, queue = _unit(6, 10, g=g), _unit(50, 10, g=g)
    h = mochi_negatives(q, queue, 1, 9, 2, generator=_gen(0))
    for b in range(6):
        hardest = max(range(50), key=lambda r: float(q[b] @ queue[r]))
        for r in range(9):
            torch.testing.assert_close(h[b, r], queue[hardest])


def test_type2_is_harder_than_its_negative() -> None:
    g = _gen(3)
    q, queue = _unit(8, 5, g=g), _unit(64, 5, g=g)
    h = mochi_negatives(q, queue, 16, 4, 50, generator=_gen(5))
    dr = mochi_draws(q @ queue.T, 16, 4, 50, generator=_gen(5))
    qh2 = (q[:, None] * h[:, 4:]).sum(-1)
    qn = (q @ queue.T).gather(1, dr.pos_k)
    assert bool((qh2 >= qn - 1e-12).all())


def test_per_query_pools_for_opposite_queries() -> None:
    g = _gen(4)
    d = 8
    e1 = torch.zeros(d, dtype=D64)
    e1[0] = 1
    plus = F.normalize(e1 + 0.3 * torch.randn(20, d, generator=g, dtype=D64), dim=1)
    minus = F.normalize(-e1 + 0.3 * torch.randn(20, d, generator=g, dtype=D64), dim=1)
    queue = torch.cat([plus, minus])[torch.randperm(40, generator=g)]
    q = torch.stack([e1, -e1])
    h = mochi_negatives(q, queue, 20, 64, 16, generator=_gen(0))
    assert bool((h[0] @ e1 > 0).all()) and bool((h[1] @ e1 < 0).all())
    dr = mochi_draws(q @ queue.T, 20, 64, 16, generator=_gen(0))
    assert not set(dr.pos_i[0].tolist()) & set(dr.pos_i[1].tolist())


def test_queue_permutation_invariance() -> None:
    g = _gen(5)
    q, key, queue = _unit(5, 8, g=g), _unit(5, 8, g=g), _unit(60, 8, g=g)
    ids = torch.randint(0, 10, (60,), generator=g)
    qids = torch.arange(5)
    perm = torch.randperm(60, generator=g)
    h1 = mochi_negatives(q, queue, 12, 20, 6, queue_ids=ids, query_ids=qids,
                         generator=_gen(3))
    h2 = mochi_negatives(q, queue[perm], 12, 20, 6, queue_ids=ids[perm], query_ids=qids,
                         generator=_gen(3))
    torch.testing.assert_close(h1, h2)
    loss = MoCHiLoss(num_hard=12, num_mix=20, num_query_mix=6)
    l1 = loss(q, key, queue, queue_ids=ids, query_ids=qids, generator=_gen(3))
    l2 = loss(q, key, queue[perm], queue_ids=ids[perm], query_ids=qids, generator=_gen(3))
    torch.testing.assert_close(l1, l2)


@pytest.mark.parametrize("dtype", [D64, torch.float32])  # float32 on CPU: the fused kernel
@pytest.mark.parametrize("ids", [False, True])
@pytest.mark.parametrize("n_hard,s,s2", [(8, 16, 4), (3, 10, 10), (200, 5, 2)])
def test_fast_path_equals_materialised_value_and_gradient(ids, n_hard, s, s2, dtype) -> None:
    g = _gen(6)
    b, k, d = 6, 40, 7
    q0 = _unit(b, d, g=g, dtype=dtype)
    queue = _unit(k, d, g=g, dtype=dtype)
    kw = {}
    if ids:
        kw = {"queue_ids": torch.randint(0, 4, (k,), generator=g), "query_ids": torch.arange(b)}
    w = torch.randn(b, s + s2, generator=g, dtype=dtype)  # random upstream gradient
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == D64 else {"rtol": 1e-5, "atol": 1e-6}

    q = q0.clone().requires_grad_()
    h = mochi_negatives(q, queue, n_hard, s, s2, generator=_gen(11), **kw)
    ref = (q[:, None] * h).sum(-1)
    (ref * w).sum().backward()
    g_ref = q.grad.clone()

    q = q0.clone().requires_grad_()
    fast = mochi_logits(q, queue, q @ queue.T, n_hard, s, s2, generator=_gen(11), **kw)
    (fast * w).sum().backward()
    torch.testing.assert_close(fast, ref.detach(), **tol)
    torch.testing.assert_close(q.grad, g_ref, **tol)
    if ids:
        dr = mochi_draws(q0 @ queue.T, n_hard, s, s2, generator=_gen(11), **kw)
        for pos in (dr.pos_i, dr.pos_j, dr.pos_k):
            assert bool((kw["queue_ids"][pos] != kw["query_ids"][:, None]).all())


@pytest.mark.parametrize("dtype", [D64, torch.float32])
@pytest.mark.parametrize("mask", [False, True])
def test_loss_equals_materialised_loss(dtype, mask) -> None:
    """The fused loss (custom backward) equals autograd through the materialised negatives,
    in value and gradient, with ids and (optionally) the query's own keys masked."""
    g = _gen(7)
    b, k, d, tau = 8, 64, 16, 0.2
    q0, key, queue = (_unit(b, d, g=g, dtype=dtype), _unit(b, d, g=g, dtype=dtype),
                      _unit(k, d, g=g, dtype=dtype))
    queue_ids = torch.randint(0, 6, (k,), generator=g)  # queries 0-5 own a few rows each
    queue_ids[::2] = 7  # query 7 owns half the queue
    query_ids = torch.arange(b)
    ids = {"queue_ids": queue_ids, "query_ids": query_ids}
    q = q0.clone().requires_grad_()
    loss_fn = MoCHiLoss(
        tau, num_hard=16, num_mix=24, num_query_mix=8, exclude_same_instance=mask
    )
    loss = loss_fn(q, key, queue, generator=_gen(1), **ids)
    loss.backward()
    g_fast = q.grad.clone()
    q = q0.clone().requires_grad_()
    h = mochi_negatives(q, queue, 16, 24, 8, generator=_gen(1), **ids)
    real = q @ queue.T
    if mask:
        real = real.masked_fill(query_ids[:, None] == queue_ids[None, :], float("-inf"))
    logits = torch.cat([(q * key).sum(1, keepdim=True), real,
                        (q[:, None] * h).sum(-1)], dim=1) / tau
    ref = F.cross_entropy(logits, torch.zeros(b, dtype=torch.long))
    ref.backward()
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == D64 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(loss, ref, **tol)
    torch.testing.assert_close(g_fast, q.grad, **tol)
    assert torch.isfinite(g_fast).all()


@pytest.mark.parametrize("dtype", [D64, torch.float32])  # float32 on CPU: the kernels
def test_fused_loss_with_a_query_without_eligible_rows(dtype) -> None:
    """Every queue row is the query's own sample: no synthetic logits, finite gradient,
    equal to the autograd reference."""
    g = _gen(8)
    b, k, d, tau = 3, 20, 8, 0.2
    q0, key, queue = (_unit(b, d, g=g, dtype=dtype), _unit(b, d, g=g, dtype=dtype),
                      _unit(k, d, g=g, dtype=dtype))
    ids = {"queue_ids": torch.zeros(k, dtype=torch.long),
           "query_ids": torch.tensor([0, 1, 2])}  # query 0 owns every row
    q = q0.clone().requires_grad_()
    loss = MoCHiLoss(tau, num_hard=4, num_mix=6, num_query_mix=2, exclude_same_instance=False)(
        q, key, queue, generator=_gen(2), **ids)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(q.grad).all()
    q_ref = q0.clone().requires_grad_()
    h = mochi_negatives(q_ref, queue, 4, 6, 2, generator=_gen(2), **ids)
    syn = (q_ref[:, None] * h).sum(-1).masked_fill(
        torch.tensor([True, False, False])[:, None], float("-inf"))
    logits = torch.cat([(q_ref * key).sum(1, keepdim=True), q_ref @ queue.T, syn], dim=1) / tau
    F.cross_entropy(logits, torch.zeros(b, dtype=torch.long)).backward()
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == D64 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(q.grad, q_ref.grad, **tol)


@pytest.mark.parametrize("mask", [False, True])
def test_cpu_kernels_and_torch_path_agree(mask: bool, monkeypatch) -> None:
    """float32 on the CPU: the numba kernels (selection, coefficients and synthetic logits in
    one pass, fused backward scatter) and the torch path give the same loss and gradient."""
    g = _gen(12)
    b, k, d, tau = 16, 300, 32, 0.2
    q0, key, queue = (_unit(b, d, g=g, dtype=torch.float32), _unit(b, d, g=g, dtype=torch.float32),
                      _unit(k, d, g=g, dtype=torch.float32))
    ids = {"queue_ids": torch.randint(0, 20, (k,), generator=g), "query_ids": torch.arange(b)}
    out = {}
    for numba_on in (True, False):
        monkeypatch.setattr(mochi_mod, "USE_NUMBA", numba_on)
        q = q0.clone().requires_grad_()
        loss_fn = MoCHiLoss(tau, num_hard=40, num_mix=64, num_query_mix=16,
                            exclude_same_instance=mask)
        loss = loss_fn(q, key, queue, generator=_gen(3), **ids)
        loss.backward()
        out[numba_on] = (loss.detach(), q.grad.clone(), loss_fn.last_proxy_accuracy)
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-4, atol=1e-6)
    assert out[True][2] == out[False][2]


def test_reduces_to_moco_infonce_exactly() -> None:
    g = _gen(8)
    q, key, queue = _unit(8, 16, g=g, dtype=torch.float32), _unit(8, 16, g=g,
                                                                   dtype=torch.float32), \
        _unit(100, 16, g=g, dtype=torch.float32)
    ref = moco_infonce(q, key, queue, 0.2)
    no_mix = MoCHiLoss(0.2, num_hard=10, num_mix=0, num_query_mix=0)
    assert torch.equal(no_mix(q, key, queue), ref) and not no_mix.last_mixed
    loss = MoCHiLoss(0.2, num_hard=10, num_mix=5, num_query_mix=5)
    assert torch.equal(loss(q, key, queue, mix=False), ref) and not loss.last_mixed  # warm-up
    assert torch.equal(mochi_loss(q, key, queue, 0.2, num_hard=10, num_mix=5, num_query_mix=5,
                                  mix=False), ref)
    # the queue holds fewer than N real keys: no mixing yet
    assert torch.equal(loss(q, key, queue[:9]), moco_infonce(q, key, queue[:9], 0.2))
    assert not loss.last_mixed
    assert loss(q, key, queue) > ref and loss.last_mixed


def test_synthetic_negatives_never_lower_the_loss() -> None:
    for seed in range(5):
        g = _gen(seed)
        q, key, queue = _unit(16, 8, g=g), _unit(16, 8, g=g), _unit(128, 8, g=g)
        base = moco_infonce(q, key, queue, 0.2)
        for n_hard, s, s2 in [(1, 1, 0), (8, 0, 1), (32, 64, 16)]:
            mixed = MoCHiLoss(0.2, n_hard, s, s2)(q, key, queue, generator=_gen(seed))
            assert mixed >= base


def test_no_gradient_reaches_queue_or_key() -> None:
    g = _gen(9)
    q = _unit(4, 8, g=g).requires_grad_()
    key = _unit(4, 8, g=g).requires_grad_()
    queue = _unit(32, 8, g=g).requires_grad_()
    MoCHiLoss(0.2, 8, 16, 4)(q, key, queue, generator=_gen(0)).backward()
    assert key.grad is None and queue.grad is None
    assert q.grad is not None and bool(torch.isfinite(q.grad).all())
    h = mochi_negatives(q, queue, 8, 16, 4)
    assert not h.requires_grad


def test_query_without_eligible_entries_has_finite_gradient() -> None:
    g = _gen(10)
    q = _unit(3, 8, g=g).requires_grad_()
    key, queue = _unit(3, 8, g=g), _unit(20, 8, g=g)
    queue_ids = torch.zeros(20, dtype=torch.long)  # every entry is sample 0
    query_ids = torch.tensor([0, 1, 2])  # query 0 has no eligible entry
    fast = mochi_logits(q, queue, q @ queue.T, 4, 5, 3,
                        queue_ids=queue_ids, query_ids=query_ids, generator=_gen(0))
    assert torch.isneginf(fast[0]).all() and torch.isfinite(fast[1:]).all()
    loss = MoCHiLoss(0.2, 4, 5, 3)(q, key, queue, queue_ids=queue_ids, query_ids=query_ids)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and bool(torch.isfinite(q.grad).all())
    h = mochi_negatives(q, queue, 4, 5, 3, queue_ids=queue_ids, query_ids=query_ids)
    assert bool((h[0] == 0).all()) and torch.allclose(h[1:].norm(dim=-1),
                                                      torch.ones(2, 8, dtype=D64))


def test_proxy_accuracy_matches_loop() -> None:
    g = _gen(11)
    q, queue = _unit(32, 4, g=g), _unit(50, 4, g=g)
    key = F.normalize(q + 0.8 * torch.randn(32, 4, generator=g, dtype=D64), dim=1)
    loss = MoCHiLoss(0.2, 8, 8, 2)
    assert math.isnan(loss.last_proxy_accuracy)
    loss(q, key, queue)
    wins = sum(all(float(q[b] @ key[b]) > float(q[b] @ n) for n in queue) for b in range(32))
    assert 0 < wins < 32
    assert loss.last_proxy_accuracy == pytest.approx(wins / 32)


@pytest.mark.parametrize("exclude_same_instance", [True, False])
@pytest.mark.parametrize("numba_on", [True, False])
def test_proxy_accuracy_with_own_rows(exclude_same_instance: bool, numba_on: bool,
                                      monkeypatch) -> None:
    """The mixed path takes the row maximum from the hard-set selection; it must still be
    the maximum over the denominator's real negatives (own rows in it or not)."""

    monkeypatch.setattr(mochi_mod, "USE_NUMBA", numba_on)
    g = _gen(13)
    q, queue = _unit(32, 4, g=g, dtype=torch.float32), _unit(60, 4, g=g, dtype=torch.float32)
    key = F.normalize(q + 0.8 * torch.randn(32, 4, generator=g), dim=1)
    query_ids = torch.arange(32)
    queue_ids = torch.arange(60) % 40
    queue[:32] = key  # each query's own key sits in the queue, and beats the query's key
    queue[:32, 0] += 1e-3
    queue = F.normalize(queue, dim=1)
    loss = MoCHiLoss(0.2, 8, 8, 2, exclude_same_instance=exclude_same_instance)
    loss(q, key, queue, queue_ids=queue_ids, query_ids=query_ids, generator=_gen(0))
    assert loss.last_mixed
    wins = 0
    for b in range(32):
        negs = [n for n, i in zip(queue, queue_ids, strict=True)
                if not (exclude_same_instance and int(i) == b)]
        wins += all(float(q[b] @ key[b]) > float(q[b] @ n) for n in negs)
    assert loss.last_proxy_accuracy == pytest.approx(wins / 32)


def test_autocast_computes_in_fp32() -> None:
    g = _gen(12)
    q, key, queue = (_unit(n, 16, g=g, dtype=torch.float32) for n in (8, 8, 64))
    loss = MoCHiLoss(0.2, 8, 8, 4)
    ref = loss(q, key, queue, generator=_gen(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(q, key, queue, generator=_gen(0))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref)


def test_bad_input() -> None:
    g = _gen(13)
    q, key, queue = _unit(4, 8, g=g), _unit(4, 8, g=g), _unit(20, 8, g=g)
    with pytest.raises(ValueError, match="num_hard"):
        MoCHiLoss(num_hard=0)
    with pytest.raises(ValueError, match="num_mix"):
        MoCHiLoss(num_mix=-1)
    with pytest.raises(ValueError, match="temperature"):
        MoCHiLoss(temperature=0.0)
    with pytest.raises(ValueError, match="num_hard"):
        mochi_negatives(q, queue, 0, 4, 4)
    loss = MoCHiLoss(0.2, 4, 4, 4)
    with pytest.raises(ValueError, match="queue"):
        loss(q, key, _unit(20, 7, g=g))
    bad = q.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="query"):
        loss(bad, key, queue)
    with pytest.raises(ValueError, match="L2-normalised"):
        loss(2 * q, key, queue)
    with pytest.raises(ValueError, match="queue"):
        mochi_negatives(q, 3 * queue, 4, 4, 4)
    with pytest.raises(ValueError, match="queue"):
        mochi_negatives(q, queue[:0], 4, 4, 4)
    with pytest.raises(ValueError, match="query_ids"):
        loss(q, key, queue, queue_ids=torch.zeros(20, dtype=torch.long))
    with pytest.raises(ValueError, match="queue_ids"):
        loss(q, key, queue, queue_ids=torch.zeros(19, dtype=torch.long),
             query_ids=torch.arange(4))
    with pytest.raises(ValueError, match="sims"):
        mochi_logits(q, queue, (q @ queue.T)[:, :5], 4, 4, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pair_norm_kernels_agree(dtype, monkeypatch) -> None:
    """The numba CPU kernel and the chunked torch fallback give the same type-1 norms."""

    g = _gen(14)
    queue = _unit(50, 9, g=g, dtype=dtype)
    pi, pj = torch.randint(0, 50, (2, 7, 33), generator=g)
    a = torch.rand(7, 33, generator=g, dtype=dtype)
    ref = (a[..., None] * queue[pi] + (1 - a[..., None]) * queue[pj]).norm(dim=-1)
    monkeypatch.setattr(mochi_mod, "USE_NUMBA", True)
    fast = mochi_mod._pair_norms(queue, pi, pj, a, 1 - a)
    monkeypatch.setattr(mochi_mod, "USE_NUMBA", False)
    slow = mochi_mod._pair_norms(queue, pi, pj, a, 1 - a)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(fast, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(slow, ref, rtol=tol, atol=tol)


def test_loss_leaves_torch_thread_count_alone() -> None:
    """numba's OpenMP layer shares the runtime with torch; the loss must not change it."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        g = _gen(15)
        q, key, queue = (_unit(n, 8, g=g, dtype=torch.float32) for n in (4, 4, 64))
        MoCHiLoss(0.2, 8, 16, 4)(q, key, queue)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_exclude_same_instance_reduces_to_moco_with_ids() -> None:
    """With the mask on and no mixing, MoCHi equals MoCo InfoNCE given the same ids."""
    torch.manual_seed(5)
    q = F.normalize(torch.randn(6, 16), dim=1)
    k = F.normalize(torch.randn(6, 16), dim=1)
    queue = F.normalize(torch.randn(40, 16), dim=1)
    queue_ids = torch.arange(40) % 10
    query_ids = torch.tensor([0, 1, 2, 3, 11, 12])
    masked = MoCHiLoss(num_hard=8, num_mix=0, num_query_mix=0, exclude_same_instance=True)
    plain = MoCHiLoss(num_hard=8, num_mix=0, num_query_mix=0, exclude_same_instance=False)
    got = masked(q, k, queue, queue_ids=queue_ids, query_ids=query_ids)
    want = moco_infonce(q, k, queue, 0.2, queue_ids=queue_ids, query_ids=query_ids)
    torch.testing.assert_close(got, want)
    unmasked = plain(q, k, queue, queue_ids=queue_ids, query_ids=query_ids)
    assert unmasked.item() > got.item()  # the own keys were extra negatives
    # with mixing on, the masked loss stays finite with finite gradients
    qg = q.clone().requires_grad_()
    mixed = MoCHiLoss(num_hard=8, num_mix=16, num_query_mix=4, exclude_same_instance=True)
    mixed(qg, k, queue, queue_ids=queue_ids, query_ids=query_ids).backward()
    assert torch.isfinite(qg.grad).all()


@pytest.mark.parametrize("case", ["gauss", "excluded", "ties", "few_eligible", "signed_zero",
                                  "none_eligible", "wide_ties", "skewed",
                                  "misleading_sample"])
@pytest.mark.parametrize("numba_on", [True, False])
def test_draws_address_ranks_of_a_stable_descending_sort(case: str, numba_on: bool,
                                                         monkeypatch) -> None:
    """Both selection paths (CPU kernel, torch.topk) map draw u to rank floor(u * |H_q|) of
    the eligible entries sorted by decreasing similarity (kernel: equal values by queue row),
    with u the counter-based stream keyed by one seed drawn from the generator."""

    monkeypatch.setattr(mochi_mod, "USE_NUMBA", numba_on)
    g = torch.Generator().manual_seed(0)
    b, k, n, s, s2 = 16, 3000, 700, 64, 16
    sims = torch.randn(b, k, generator=g)
    queue_ids = torch.arange(k)
    query_ids = torch.full((b,), -5)
    if case == "excluded":
        queue_ids = torch.arange(k) % 7
        query_ids = torch.arange(b) % 7
    elif case == "ties":
        if not numba_on:
            pytest.skip("torch.topk orders equal values arbitrarily")
        sims = torch.randint(0, 5, (b, k), generator=g).float()
    elif case == "few_eligible":
        queue_ids = torch.where(torch.arange(k) < 5, -1, 3)
        query_ids = torch.full((b,), 3)
    elif case == "none_eligible":
        queue_ids = torch.zeros(k, dtype=torch.long)
        query_ids = torch.zeros(b, dtype=torch.long)
    elif case == "signed_zero":
        if not numba_on:
            pytest.skip("torch.topk orders equal values arbitrarily")
        sims[:, ::3] = 0.0
        sims[:, 1::5] = -0.0
    elif case == "skewed":  # one far outlier: the kernel's bucket pass puts all in one bucket
        sims = sims * 1e-4
        sims[:, 7] = 1e30
    elif case == "wide_ties":  # far more survivors of the threshold than the kernel's first room
        if not numba_on:
            pytest.skip("torch.topk orders equal values arbitrarily")
        b, k, n = 4, 20000, 10
        sims = torch.rand(b, k, generator=g) * 0.5
        sims[:, 3:12003] = 1.0
        queue_ids = torch.arange(k)
        query_ids = torch.full((b,), -5)
    elif case == "misleading_sample":
        # the kernel's threshold sample (block ((u * 0x9E3779B1) >> 29) & 7 of 16 columns in
        # each run u of 128) holds the row's largest values, the rest lies lower: its first
        # threshold keeps fewer than N, the 4x lower retry keeps enough
        b, k, n = 4, 4096, 300
        sims = torch.rand(b, k, generator=g) * 0.7
        for run in range(k // 128):
            off = run * 128 + 16 * (((run * 0x9E3779B1) >> 29) & 7)
            sims[:, off : off + 16] = torch.rand(b, 16, generator=g)
        queue_ids = torch.arange(k)
        query_ids = torch.full((b,), -5)
    draws = mochi_draws(sims, n, s, s2, queue_ids=queue_ids, query_ids=query_ids,
                        generator=torch.Generator().manual_seed(1))
    seed = draw_seed(torch.Generator().manual_seed(1), sims.device)
    u = counter_uniform(seed, b, 3 * s + 2 * s2)
    masked = sims.masked_fill(queue_ids.unsqueeze(0) == query_ids.unsqueeze(1), float("-inf"))
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices
    count = torch.isfinite(masked).sum(dim=1).clamp_max(n)
    assert torch.equal(draws.valid, count > 0)
    for r in range(b):
        if count[r] == 0:
            continue
        ranks = torch.minimum((u[r, : 2 * s + s2] * count[r]).long(), count[r] - 1)
        assert torch.equal(draws.positions[r], order[r, ranks])
        assert torch.equal(draws.picked[r], sims[r, draws.positions[r]])
        assert draws.top[r] == masked[r].max()
    torch.testing.assert_close(draws.alpha, u[:, 2 * s + s2 : 3 * s + s2], rtol=0, atol=0)
    torch.testing.assert_close(draws.beta, 0.5 * u[:, 3 * s + s2 :], rtol=0, atol=0)


@pytest.mark.parametrize("numba_on", [True, False])
def test_scatter_synthetic_matches_torch(numba_on: bool, monkeypatch) -> None:
    """The synthetic logits' backward (CPU kernel or torch path) equals a scatter_add_ of the
    weighted gradients, type 1's gradient going to both of its columns."""
    monkeypatch.setattr(mochi_mod, "USE_NUMBA", numba_on)
    g = _gen(21)
    b, k, s, s2 = 9, 50, 120, 30
    out = torch.randn(b, k, generator=g)
    pos = torch.randint(0, k, (b, 2 * s + s2), generator=g)  # many repeated columns per row
    weights = torch.randn(b, 2 * s + s2, generator=g)
    c_q = torch.randn(b, s2, generator=g)
    p_syn = torch.randn(b, s + s2, generator=g)
    src = torch.cat([p_syn[:, :s], p_syn[:, :s], p_syn[:, s:]], dim=1) * weights
    want = out.clone().scatter_add_(1, pos, src)
    got = out.clone()
    g_qq = mochi_mod.scatter_synthetic(got, pos, weights, c_q, p_syn, s)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(g_qq, (p_syn[:, s:] * c_q).sum(dim=1, keepdim=True),
                               rtol=1e-6, atol=1e-5)


@pytest.fixture
def _accelerator_rules(monkeypatch):
    """The rules of a training step on a GPU, emulated on the CPU: the torch path (numba is
    CPU-only) and no value checks (skipped off the CPU unless debug checks are on)."""
    from contrastmix import _validation

    before = _validation.debug_checks()
    monkeypatch.setattr(mochi_mod, "USE_NUMBA", False)
    _validation.set_debug_checks(False)
    yield
    _validation.set_debug_checks(before)


@pytest.mark.usefixtures("_accelerator_rules")
@pytest.mark.parametrize("ids", [False, True])
@pytest.mark.parametrize("exclude", [False, True])
def test_training_step_reads_no_tensor_value(ids: bool, exclude: bool) -> None:
    """Forward and backward of the MoCHi loss (mixing on and off, with and without ids)
    and the fast synthetic logits never read a tensor value back to the host: on a GPU
    each read would wait for the device."""
    from tests._host_reads import forbid_host_reads

    g = _gen(30)
    b, k, d = 6, 80, 16
    q0, key, queue = (_unit(n, d, g=g, dtype=torch.float32) for n in (b, b, k))
    kw = {}
    if ids:  # queries 0-3 own a few rows each, queries 4 and 5 (sample 9) half the queue
        queue_ids = torch.randint(0, 4, (k,), generator=g)
        queue_ids[1::2] = 9
        kw = {"queue_ids": queue_ids, "query_ids": torch.tensor([0, 1, 2, 3, 9, 9])}
    loss_fn = MoCHiLoss(0.2, num_hard=16, num_mix=12, num_query_mix=4,
                        exclude_same_instance=exclude)
    gen = _gen(1)
    for mix in (True, False):
        q = q0.clone().requires_grad_()
        with forbid_host_reads():
            loss = loss_fn(q, key, queue, generator=gen, mix=mix, **kw)
            loss.backward()
            proxy = loss_fn.last_proxy
            syn = mochi_logits(q, queue, q @ queue.T, 16, 12, 4, generator=gen, **kw)
            syn.sum().backward()
        assert loss_fn.last_mixed is mix and isinstance(proxy, torch.Tensor)
        assert torch.isfinite(loss) and torch.isfinite(q.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_step_does_not_synchronise() -> None:
    """On a GPU, with the default rules (value checks off there): forward and backward of the
    loss under ``torch.cuda.set_sync_debug_mode("error")`` (a synchronising call raises), and
    the value and gradient equal autograd through the materialised negatives there."""
    dev = torch.device("cuda")
    g = _gen(31)
    b, k, d, tau = 8, 256, 32, 0.2
    q0, key, queue = (_unit(n, d, g=g, dtype=torch.float32).to(dev) for n in (b, b, k))
    ids = {"queue_ids": torch.randint(0, 50, (k,), generator=g).to(dev),
           "query_ids": torch.arange(b).to(dev)}
    loss_fn = MoCHiLoss(tau, num_hard=64, num_mix=32, num_query_mix=8)
    gen = torch.Generator(device=dev)
    for sync_mode in ("default", "error"):  # a warm-up (library initialisation), then checked
        torch.cuda.set_sync_debug_mode(sync_mode)
        try:
            for mix in (True, False):
                q = q0.clone().requires_grad_()
                loss_fn(q, key, queue, generator=gen.manual_seed(0), mix=mix, **ids).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    q = q0.clone().requires_grad_()
    loss = loss_fn(q, key, queue, generator=gen.manual_seed(1), **ids)
    loss.backward()
    q_ref = q0.clone().requires_grad_()
    h = mochi_negatives(q_ref, queue, 64, 32, 8, generator=gen.manual_seed(1), **ids)
    real = (q_ref @ queue.T).masked_fill(ids["query_ids"][:, None] == ids["queue_ids"][None],
                                         float("-inf"))
    logits = torch.cat([(q_ref * key).sum(1, keepdim=True), real,
                        (q_ref[:, None] * h).sum(-1)], dim=1) / tau
    ref = F.cross_entropy(logits, torch.zeros(b, dtype=torch.long, device=dev))
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(q.grad, q_ref.grad, rtol=1e-4, atol=1e-5)
