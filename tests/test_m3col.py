"""Tests of M3Co / M3CoL (docs/methods.md §6): loss, draws, phases, objective and model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contrastmix.losses.clip import clip_loss
from contrastmix.losses.m3col import (
    M3CoLLoss,
    M3CoLObjective,
    m3co_loss,
    m3co_targets,
    m3col_total_loss,
    random_derangement,
    sample_m3co_mixing,
    soft_clip_loss,
)
from contrastmix.models.multimodal import M3CoLModel


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _soft_ce_loop(logits: list[list[float]], target: list[list[float]]) -> float:
    total = 0.0
    for row, t in zip(logits, target, strict=True):
        m = max(row)
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        total += sum(tj * (lse - v) for v, tj in zip(row, t, strict=True))
    return total / len(logits)


def _m3co_reference(p, q, beta, perm, tau) -> float:
    """Explicit loops: mix, normalise, soft CE over rows and over columns."""
    b = p.shape[0]
    pm = [beta[i] * p[i].double() + (1 - beta[i]) * p[perm[i]].double() for i in range(b)]
    pm = [v / v.norm() for v in pm]
    qn = [q[j].double() / q[j].double().norm() for j in range(b)]
    s = [[float((pm[i] * qn[j]).sum()) / tau for j in range(b)] for i in range(b)]
    t = [[0.0] * b for _ in range(b)]
    for i in range(b):
        t[i][i] += beta[i]
        t[i][perm[i]] += 1 - beta[i]
    cols = [[s[i][j] for i in range(b)] for j in range(b)]
    tcols = [[t[i][j] for i in range(b)] for j in range(b)]
    return 0.5 * (_soft_ce_loop(s, t) + _soft_ce_loop(cols, tcols))


# ------------------------------------------------------------------------------ m3co_loss


def test_all_beta_one_is_symmetric_infonce() -> None:
    p, q = _randn(7, 5, seed=1) * 3, _randn(7, 5, seed=2)
    perm = random_derangement(7, generator=torch.Generator().manual_seed(0))
    got = m3co_loss(p, q, torch.ones(7), perm, temperature=0.1)
    ref = clip_loss(F.normalize(p, dim=-1), F.normalize(q, dim=-1), 0.1)
    torch.testing.assert_close(got, ref)


def test_m3co_matches_loop_reference() -> None:
    p, q = _randn(6, 4, seed=3), _randn(6, 4, seed=4)
    beta = torch.tensor([1.0, 0.3, 0.0, 0.8, 1.0, 0.55])
    perm = torch.tensor([3, 0, 5, 1, 2, 4])
    got = m3co_loss(p, q, beta, perm, temperature=0.1)
    ref = _m3co_reference(p, q, beta.tolist(), perm.tolist(), 0.1)
    assert float(got) == pytest.approx(ref, abs=1e-4)


def test_targets_rows_sum_to_one_and_structure() -> None:
    beta, perm = sample_m3co_mixing(9, generator=torch.Generator().manual_seed(5))
    t = m3co_targets(beta, perm)
    torch.testing.assert_close(t.sum(dim=1), torch.ones(9))
    for i in range(9):
        assert float(t[i, i]) == pytest.approx(float(beta[i]))
        assert float(t[i, perm[i]]) == pytest.approx(1 - float(beta[i]))
        others = [j for j in range(9) if j not in (i, int(perm[i]))]
        assert float(t[i, others].abs().sum()) == 0.0


def test_batch_of_one_raises() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        random_derangement(1)
    with pytest.raises(ValueError, match="at least 2"):
        m3co_loss(_randn(1, 3), _randn(1, 3), torch.ones(1), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2"):
        M3CoLLoss()([_randn(1, 3), _randn(1, 3)], mixup=True)


def test_m3co_bad_input() -> None:
    p, q = _randn(4, 3, seed=6), _randn(4, 3, seed=7)
    ok_perm = torch.tensor([1, 0, 3, 2])
    with pytest.raises(ValueError, match=r"derangement.*\[2, 3\]"):
        m3co_loss(p, q, torch.ones(4), torch.tensor([1, 0, 2, 3]))
    with pytest.raises(ValueError, match="permutation"):
        m3co_loss(p, q, torch.ones(4), torch.tensor([1, 1, 3, 2]))
    with pytest.raises(ValueError, match="`beta` must lie"):
        m3co_loss(p, q, torch.full((4,), 1.5), ok_perm)
    with pytest.raises(ValueError, match="one entry per row"):
        m3co_loss(p, q, torch.ones(3), ok_perm)
    with pytest.raises(ValueError, match="length mismatch"):
        m3co_loss(p, q[:3], torch.ones(4), ok_perm)
    with pytest.raises(ValueError, match="same embedding dimension"):
        m3co_loss(p, _randn(4, 5), torch.ones(4), ok_perm)
    with pytest.raises(ValueError, match="temperature"):
        m3co_loss(p, q, torch.ones(4), ok_perm, temperature=0.0)
    with pytest.raises(ValueError, match="integer"):
        m3co_loss(p, q, torch.ones(4), ok_perm.float())


def test_m3co_gradient_finite_when_mixture_cancels() -> None:
    # p_0 = -p_1 and beta = 0.5 mixes row 0 to the zero vector (0/0 in the normalisation).
    p = _randn(4, 3, seed=8)
    p[1] = -p[0]
    p.requires_grad_(True)
    q = _randn(4, 3, seed=9).requires_grad_(True)
    beta = torch.tensor([0.5, 1.0, 1.0, 1.0])
    perm = torch.tensor([1, 0, 3, 2])
    loss = m3co_loss(p, q, beta, perm)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(p.grad).all() and torch.isfinite(q.grad).all()


def test_m3co_fp16_and_autocast() -> None:
    p, q = _randn(5, 4, seed=10), _randn(5, 4, seed=11)
    beta, perm = torch.full((5,), 0.7), torch.tensor([1, 2, 3, 4, 0])
    got = m3co_loss(p.half(), q.half(), beta, perm)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, m3co_loss(p.half().float(), q.half().float(), beta, perm))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = m3co_loss(p, q, beta, perm)
    torch.testing.assert_close(out, m3co_loss(p, q, beta, perm))


# ----------------------------------------------------------------------------------- draws


def test_random_derangement_properties() -> None:
    g = torch.Generator().manual_seed(0)
    counts: dict[tuple[int, ...], int] = {}
    for _ in range(400):
        perm = random_derangement(3, generator=g)
        assert sorted(perm.tolist()) == [0, 1, 2]
        assert all(int(perm[i]) != i for i in range(3))
        counts[tuple(perm.tolist())] = counts.get(tuple(perm.tolist()), 0) + 1
    assert set(counts) == {(1, 2, 0), (2, 0, 1)}  # the two derangements of 3, both drawn
    assert min(counts.values()) > 150
    a = random_derangement(50, generator=torch.Generator().manual_seed(7))
    b = random_derangement(50, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_sample_mixing_distribution() -> None:
    beta, perm = sample_m3co_mixing(20000, generator=torch.Generator().manual_seed(1))
    assert beta.dtype == torch.float32 and perm.dtype == torch.long
    assert float(beta.min()) >= 0.0 and float(beta.max()) <= 1.0
    # Unmixed samples get beta = 1 exactly; so do the Beta draws that round to 1 in fp32.
    always = sample_m3co_mixing(20000, mix_prob=1.0, generator=torch.Generator().manual_seed(2))[0]
    rounds_to_one = float((always == 1.0).float().mean())
    unmixed = float((beta == 1.0).float().mean())
    assert unmixed == pytest.approx(0.5 + 0.5 * rounds_to_one, abs=0.02)
    mixed = beta[beta < 1.0]
    # Beta(0.15, 0.15) is strongly U-shaped: most mass near 0 and 1, mean 0.5.
    assert float(mixed.mean()) == pytest.approx(0.5, abs=0.03)
    assert float(((mixed < 0.05) | (mixed > 0.95)).float().mean()) > 0.5
    none = sample_m3co_mixing(100, mix_prob=0.0, generator=torch.Generator().manual_seed(1))[0]
    assert bool((none == 1.0).all())


# ------------------------------------------------------------------------------- M3CoLLoss


def test_pairs_both_directions_and_cycle() -> None:
    assert M3CoLLoss.pairs(2) == [(0, 1), (1, 0)]
    assert M3CoLLoss.pairs(3) == [(0, 1), (1, 2), (2, 0)]


def test_module_reproduces_explicit_draws() -> None:
    zs = [_randn(6, 4, seed=s) for s in (12, 13, 14)]
    loss = M3CoLLoss()(zs, mixup=True, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    expect = 0.0
    for k, j in M3CoLLoss.pairs(3):
        beta, perm = sample_m3co_mixing(6, generator=g)
        expect = expect + m3co_loss(zs[k], zs[j], beta, perm, temperature=0.1)
    torch.testing.assert_close(loss, expect)
    as_dict = M3CoLLoss()(
        {"a": zs[0], "b": zs[1], "c": zs[2]}, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(as_dict, loss)


def test_phase_switch_to_softclip() -> None:
    # The schedule is the method's (the loss takes the phase per call).
    from contrastmix.errors import RecipeError
    from contrastmix.methods.m3col import softclip_epoch, uses_mixup
    from contrastmix.recipe import load_recipe

    # The authors' epoch rule: epoch < int(0.33 * 10) = 3.
    assert uses_mixup(0, 10, 0.33) and uses_mixup(2, 10, 0.33) and not uses_mixup(3, 10, 0.33)
    assert softclip_epoch(0.33, 10) == 3 and softclip_epoch(0.33, 60) == 19
    assert not uses_mixup(0, 10, 0.0) and uses_mixup(9, 10, 1.0)
    mod = M3CoLLoss()
    p, q = _randn(5, 4, seed=15), _randn(5, 4, seed=16)
    late = mod([p, q], mixup=False)
    torch.testing.assert_close(late, soft_clip_loss(p, q, 0.125) + soft_clip_loss(q, p, 0.125))
    with pytest.raises(ValueError, match="epoch"):
        uses_mixup(-1, 10, 0.33)
    with pytest.raises(ValueError, match="max_epochs"):
        uses_mixup(0, 0, 0.33)
    with pytest.raises(RecipeError, match="mixup_pct"):
        load_recipe("m3col_digits_tri", ["method.mixup_pct=2.0"])
    with pytest.raises(ValueError, match="at least 2 modalities"):
        mod([p], mixup=True)


def test_soft_clip_matches_loop_reference() -> None:
    p, q = _randn(5, 3, seed=17), _randn(5, 3, seed=18)
    tau, b = 0.125, 5
    pn, qn = F.normalize(p.double(), dim=-1), F.normalize(q.double(), dim=-1)
    s = (pn @ qn.T / tau).tolist()
    qq = (qn @ qn.T / tau).softmax(dim=-1).tolist()
    cols = [[s[i][j] for i in range(b)] for j in range(b)]
    ref = 0.5 * (_soft_ce_loop(s, qq) + _soft_ce_loop(cols, qq))
    assert float(soft_clip_loss(p, q, tau)) == pytest.approx(ref, abs=1e-5)
    # Gradient flows through the targets unless detached.
    q1 = q.clone().requires_grad_(True)
    soft_clip_loss(p, q1).backward()
    q2 = q.clone().requires_grad_(True)
    soft_clip_loss(p, q2, detach_targets=True).backward()
    assert not torch.allclose(q1.grad, q2.grad)


# ------------------------------------------------------------------------------ objective


def test_total_loss_combines_heads_and_contrast() -> None:
    g = torch.Generator().manual_seed(0)
    fusion = torch.randn(6, 4, generator=g)
    uni = {"a": torch.randn(6, 4, generator=g), "b": torch.randn(6, 4, generator=g)}
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    contrast = torch.tensor(2.5)
    got = m3col_total_loss(fusion, uni, labels, contrast)
    expect = (
        F.cross_entropy(fusion, labels)
        + F.cross_entropy(uni["a"], labels)
        + F.cross_entropy(uni["b"], labels)
        + 0.1 * 2.5
    )
    torch.testing.assert_close(got, expect)
    with pytest.raises(ValueError, match="labels"):
        m3col_total_loss(fusion, uni, labels + 4, contrast)
    with pytest.raises(ValueError, match=r"unimodal_logits\[b\]"):
        m3col_total_loss(fusion, {"a": uni["a"], "b": uni["b"][:, :3]}, labels, contrast)


def _tiny_model() -> M3CoLModel:
    torch.manual_seed(0)
    encoders = {
        "image": nn.Sequential(nn.Flatten(), nn.Linear(64, 12)),
        "signal": nn.Sequential(nn.Flatten(), nn.Linear(40, 10)),
        "text": nn.Embedding(10, 6),
    }
    return M3CoLModel(encoders, {"image": 12, "signal": 10, "text": 6}, 10, proj_dim=8)


def test_model_outputs_and_training_step() -> None:
    model = _tiny_model()
    g = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.rand(8, 1, 8, 8, generator=g),
        "signal": torch.randn(8, 1, 40, generator=g),
        "text": torch.randint(0, 10, (8,), generator=g),
    }
    labels = torch.randint(0, 10, (8,), generator=g)
    out = model(batch)
    assert out.fusion_logits.shape == (8, 10)
    assert set(out.unimodal_logits) == set(out.embeddings) == {"image", "signal", "text"}
    assert all(v.shape == (8, 8) for v in out.embeddings.values())
    objective = M3CoLObjective()
    terms = objective.compute(
        out.fusion_logits,
        out.unimodal_logits,
        out.embeddings,
        labels,
        mixup=True,
        generator=torch.Generator().manual_seed(2),
    )
    contrast = M3CoLLoss()(out.embeddings, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(terms.contrast, contrast)
    torch.testing.assert_close(
        terms.loss, m3col_total_loss(out.fusion_logits, out.unimodal_logits, labels, contrast)
    )
    terms.loss.backward()
    for name, prm in model.named_parameters():
        assert prm.grad is not None and torch.isfinite(prm.grad).all(), name
    model.eval()
    torch.testing.assert_close(model.predict(batch), model(batch).fusion_logits)


def test_model_bad_input() -> None:
    model = _tiny_model()
    with pytest.raises(ValueError, match="lacks modalities"):
        model({"image": torch.rand(2, 1, 8, 8)})
    with pytest.raises(ValueError, match="length mismatch"):
        model(
            {
                "image": torch.rand(3, 1, 8, 8),
                "signal": torch.randn(2, 1, 40),
                "text": torch.tensor([1, 2, 3]),
            }
        )
    with pytest.raises(ValueError, match="at least 2 modalities"):
        M3CoLModel({"image": nn.Linear(3, 4)}, {"image": 4})
    with pytest.raises(ValueError, match="output width"):
        M3CoLModel({"a": nn.Identity(), "b": nn.Identity()})
