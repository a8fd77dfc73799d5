"""The library's own edges (issue 17, class 9): empty batches are refused by every loss, MoCo
rejects unnormalised inputs like the other queue loss, and norms / distances stay finite and
correct (against float64 references) for large but finite float32 inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from contrastmix import losses as L
from contrastmix._numerics import pairwise_distances_expanded, safe_scale_threshold, unit_rows
from contrastmix._validation import debug_checks, set_debug_checks
from contrastmix.eval.knn import knn_predict
from contrastmix.losses.fused_infonce import fused_infonce
from contrastmix.mixing.cmixup import CMixupSampler, cmixup_probabilities


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _g() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# ------------------------------------------------------------------ empty batches (B = 0)
E2 = _unit(0, 8)
Q = _unit(16, 8, seed=1)
EV = _unit(0, 2, 8)
EMPTY_LABELS = torch.zeros(0, dtype=torch.long)
M2 = {"mix_temperature": 0.1, "alpha": 0.5}
# every loss-like export of contrastmix.losses, called with an empty batch, and the argument
# its message must name
EMPTY_CALLS: dict[str, tuple[Callable[[], Any], str]] = {
    "moco_logits": (lambda: L.moco_logits(E2, E2, Q, 0.2), "query"),
    "moco_infonce": (lambda: L.moco_infonce(E2, E2, Q), "query"),
    "MoCoLoss": (lambda: L.MoCoLoss()(E2, E2, Q), "query"),
    "mochi_loss": (lambda: L.mochi_loss(E2, E2, Q, 0.2, num_hard=4), "query"),
    "MoCHiLoss": (lambda: L.MoCHiLoss(num_hard=4)(E2, E2, Q), "query"),
    "supcon_loss": (lambda: L.supcon_loss(EV, None), "features"),
    "SupConLoss": (lambda: L.SupConLoss()(EV, EMPTY_LABELS), "features"),
    "rnc_loss": (lambda: L.rnc_loss(EV, EMPTY_LABELS.float()), "features"),
    "RnCLoss": (lambda: L.RnCLoss()(EV, EMPTY_LABELS.float()), "features"),
    "supremix_loss": (lambda: L.supremix_loss(EV, EMPTY_LABELS.float()), "features"),
    "SupReMixLoss": (lambda: L.SupReMixLoss()(EV, EMPTY_LABELS.float()), "features"),
    "clip_logits": (lambda: L.clip_logits(E2, E2, 0.07), "image"),
    "clip_loss": (lambda: L.clip_loss(E2, E2, 0.07), "image"),
    "CLIPLoss": (lambda: L.CLIPLoss(0.07)(E2, E2), "image"),
    "m2mix_anchor_terms": (lambda: L.m2mix_anchor_terms(E2, E2, 0.5, 0.1), "image"),
    "m2mix_term": (lambda: L.m2mix_term(E2, E2, 0.1), "image"),
    "unimodal_mix_loss": (lambda: L.unimodal_mix_loss(E2, E2, 0.1), "anchor"),
    "m2mix_loss": (lambda: L.m2mix_loss(E2, E2, 0.05, **M2, generator=_g()), "image"),
    "M2MixLoss": (lambda: L.M2MixLoss(0.05, **M2)(E2, E2, generator=_g()), "image"),
    "m3co_loss": (lambda: L.m3co_loss(E2, E2, torch.zeros(0), EMPTY_LABELS), None),
    "soft_clip_loss": (lambda: L.soft_clip_loss(E2, E2), "p"),
    "m3col_loss": (lambda: L.m3col_loss(E2, E2, generator=_g()), None),
    "M3CoLLoss": (lambda: L.M3CoLLoss()(E2, E2, generator=_g()), None),
    "m3col_total_loss": (
        lambda: L.m3col_total_loss(torch.zeros(0, 3), {}, EMPTY_LABELS, torch.tensor(0.0)),
        "fusion_logits"),
    "M3CoLObjective": (
        lambda: L.M3CoLObjective()(torch.zeros(0, 3), {}, [E2, E2], EMPTY_LABELS), None),
    "mixed_cross_entropy": (
        lambda: L.mixed_cross_entropy(torch.zeros(0, 3), EMPTY_LABELS, EMPTY_LABELS, 0.5),
        "logits"),
    "fused_infonce": (lambda: fused_infonce(torch.zeros(0, 1), torch.zeros(0, 4)), "pos"),
}
NOT_LOSSES = {"m3co_targets", "random_derangement"}  # helpers that return no loss


def test_every_exported_loss_is_in_the_empty_batch_table() -> None:
    assert set(L.__all__) - NOT_LOSSES <= set(EMPTY_CALLS), set(L.__all__) - set(EMPTY_CALLS)


@pytest.mark.parametrize("name", sorted(EMPTY_CALLS))
def test_empty_batch_is_a_value_error_naming_the_argument(name: str) -> None:
    call, argument = EMPTY_CALLS[name]
    with pytest.raises(ValueError) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg
    if argument is not None:
        assert f"`{argument}`" in msg, msg
    else:
        assert "row" in msg or "empty" in msg, msg


def test_empty_queue_stays_valid() -> None:
    q, k = _unit(4, 8), _unit(4, 8, seed=2)
    assert torch.isfinite(L.moco_infonce(q, k, Q[:0]))


# ---------------------------------------------------------- moco rejects unnormalised input
@pytest.mark.parametrize("which", ["query", "key", "queue"])
def test_moco_rejects_unnormalised_rows_and_follows_the_value_check_rule(which: str) -> None:
    args = {"query": _unit(4, 8), "key": _unit(4, 8, seed=2), "queue": Q}
    args[which] = 2.0 * args[which]
    for call in (lambda: L.moco_infonce(**args), lambda: L.MoCoLoss()(*args.values())):
        with pytest.raises(ValueError, match=rf"^`{which}` must be L2-normalised"):
            call()
    old = debug_checks()
    try:  # a value check: off with CONTRASTMIX_DEBUG_CHECKS=0, as every other value check
        set_debug_checks(False)
        assert torch.isfinite(L.moco_infonce(**args))
    finally:
        set_debug_checks(old)


# ------------------------------------------------------------ large but finite inputs
BIG = 1e20  # squares overflow float32 (max 3.4e38)


def test_unit_rows_is_plain_normalize_for_ordinary_rows_and_finite_for_huge_ones() -> None:
    x = torch.randn(16, 32, generator=_g())
    assert torch.equal(unit_rows(x), F.normalize(x, dim=-1))  # bit for bit
    big = (x * BIG).requires_grad_(True)
    assert bool((F.normalize(big.detach(), dim=-1) == 0).all())  # what torch gives
    u = unit_rows(big)
    torch.testing.assert_close(u.double(), F.normalize(big.detach().double(), dim=-1))
    (u * torch.randn_like(u)).sum().backward()
    assert big.grad is not None and bool(torch.isfinite(big.grad).all())
    ref = x.double().requires_grad_(True)
    w = torch.randn(16, 32, generator=_g(), dtype=torch.float64)
    (F.normalize(ref, dim=-1) * w).sum().backward()
    big.grad = None
    (unit_rows(big) * w.float()).sum().backward()
    assert ref.grad is not None and big.grad is not None
    torch.testing.assert_close((big.grad * BIG).double(), ref.grad, rtol=1e-4, atol=1e-5)
    # mixed magnitudes: each row on its own scale
    mixed = torch.stack([x[0], x[1] * BIG])
    torch.testing.assert_close(unit_rows(mixed)[1], unit_rows(x[1:2])[0])
    assert torch.equal(unit_rows(mixed)[0], F.normalize(x[:1], dim=-1)[0])
    assert safe_scale_threshold(torch.bfloat16) == safe_scale_threshold(torch.float32)


def test_pairwise_distances_expanded_against_float64() -> None:
    z = torch.randn(10, 6, generator=_g())
    plain = (z.pow(2).sum(1)[:, None] + z.pow(2).sum(1)[None] - 2 * z @ z.T).clamp_min(1e-12)
    assert torch.equal(pairwise_distances_expanded(z), plain.sqrt())
    ref = torch.cdist(z.double() * BIG, z.double() * BIG)
    got = pairwise_distances_expanded(z * BIG)
    assert bool(torch.isfinite(got).all())
    off = ~torch.eye(10, dtype=torch.bool)
    torch.testing.assert_close(got.double()[off], ref[off], rtol=1e-4, atol=0)


@pytest.mark.parametrize("scale", [1.0, 1e20, 1e30])
def test_rnc_loss_large_features_match_float64(scale: float) -> None:
    f = torch.randn(6, 2, 8, generator=_g()) * scale
    y = torch.tensor([0.0, 1.0, 2.0, 2.5, 4.0, 7.0])
    leaf = f.clone().requires_grad_(True)
    loss = L.rnc_loss(leaf, y, 2.0)
    ref = L.rnc_loss(f.double(), y, 2.0)
    assert torch.isfinite(loss), loss
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-6)
    loss.backward()
    assert leaf.grad is not None and bool(torch.isfinite(leaf.grad).all())


def test_cmixup_probabilities_for_huge_labels_are_scale_free() -> None:
    y = torch.tensor([0.0, 1.0, 2.5, 3.0, 7.0], dtype=torch.float64)
    ref = cmixup_probabilities(y, 1.5)
    for s in (1e20, 1e200):
        got = cmixup_probabilities(y * s, 1.5 * s)
        assert bool(torch.isfinite(got).all())
        torch.testing.assert_close(got, ref)
        torch.testing.assert_close(cmixup_probabilities(y * s, 1.5 * s, exclude_self=True),
                                   cmixup_probabilities(y, 1.5, exclude_self=True))
    y2 = torch.randn(6, 3, generator=_g(), dtype=torch.float64)  # vector labels
    torch.testing.assert_close(cmixup_probabilities(y2 * 1e200, 1e200),
                               cmixup_probabilities(y2, 1.0))
    # sampler: windowed and exact rows are finite distributions
    sampler = CMixupSampler(y * 1e200, sigma=1.5e200, window=3, exclude_self=True)
    _, prob = sampler.window_candidates()
    assert bool(torch.isfinite(prob).all())
    torch.testing.assert_close(prob.sum(1), torch.ones(5, dtype=torch.float64))
    exact = CMixupSampler(y * 1e200, sigma=1.5e200, exclude_self=True)
    assert bool((exact.sample(generator=_g()) != torch.arange(5)).all())


def test_normalising_losses_and_knn_are_scale_free_at_large_inputs() -> None:
    a, b = torch.randn(6, 8, generator=_g()), torch.randn(6, 8, generator=_g())
    torch.testing.assert_close(L.clip_loss(a * BIG, b * BIG, 0.07, normalize=True),
                               L.clip_loss(a, b, 0.07, normalize=True))
    torch.testing.assert_close(L.soft_clip_loss(a * BIG, b * BIG), L.soft_clip_loss(a, b))
    big = (a * BIG).requires_grad_(True)
    loss = L.m3col_loss(big, b * BIG, generator=_g())
    torch.testing.assert_close(loss, L.m3col_loss(a, b, generator=_g()))
    loss.backward()
    assert big.grad is not None and bool(torch.isfinite(big.grad).all())
    xt = torch.randn(40, 8, generator=_g())
    yt = torch.arange(40) % 3
    assert torch.equal(knn_predict(xt * BIG, yt, xt[:10] * BIG, k=5, temperature=0.1),
                       knn_predict(xt, yt, xt[:10], k=5, temperature=0.1))
