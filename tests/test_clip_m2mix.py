"""Tests of the CLIP loss and geodesic multimodal mixup (docs/methods.md §5)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from contrastmix.losses.clip import clip_logits, clip_loss
from contrastmix.losses.m2mix import (
    M2MixLoss,
    m2mix_anchor_terms,
    m2mix_term,
    unimodal_mix_loss,
)
from contrastmix.mixing.slerp import slerp


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def _ce_loop(logits: list[list[float]], targets: list[int]) -> float:
    """Mean cross-entropy with explicit loops."""
    total = 0.0
    for row, t in zip(logits, targets, strict=True):
        m = max(row)
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        total += lse - row[t]
    return total / len(targets)


def _dot(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x.double() * y.double()).sum())


def _clip_reference(img: torch.Tensor, txt: torch.Tensor, tau: float) -> float:
    b = img.shape[0]
    i2t = [[_dot(img[i], txt[j]) / tau for j in range(b)] for i in range(b)]
    t2i = [[_dot(txt[i], img[j]) / tau for j in range(b)] for i in range(b)]
    return 0.5 * (_ce_loop(i2t, list(range(b))) + _ce_loop(t2i, list(range(b))))


def _m2mix_reference(img: torch.Tensor, txt: torch.Tensor, lam: float, tau: float):
    b = img.shape[0]
    mix = slerp(img.double(), txt.double(), lam)
    li = [
        [(_dot(img[i], txt[i]) if j == i else _dot(img[i], mix[j])) / tau for j in range(b)]
        for i in range(b)
    ]
    lt = [
        [(_dot(txt[i], img[i]) if j == i else _dot(txt[i], mix[j])) / tau for j in range(b)]
        for i in range(b)
    ]
    return _ce_loop(li, list(range(b))), _ce_loop(lt, list(range(b)))


# ------------------------------------------------------------------------------------- CLIP


def test_clip_loss_matches_loop_reference() -> None:
    img, txt = _unit(7, 5, seed=1), _unit(7, 5, seed=2)
    got = clip_loss(img, txt, 0.1)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(_clip_reference(img, txt, 0.1), abs=1e-5)


def test_clip_loss_is_symmetric_and_perm_equivariant() -> None:
    img, txt = _unit(6, 4, seed=3), _unit(6, 4, seed=4)
    torch.testing.assert_close(clip_loss(img, txt), clip_loss(txt, img))
    p = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(clip_loss(img[p], txt[p]), clip_loss(img, txt))


def test_clip_logits_shapes_and_targets() -> None:
    img, txt = _unit(4, 3, seed=5), _unit(4, 3, seed=6)
    li, lt, t = clip_logits(img, txt, 0.5)
    torch.testing.assert_close(li, img @ txt.T / 0.5)
    torch.testing.assert_close(lt, li.T)
    assert t.tolist() == [0, 1, 2, 3]


def test_clip_learnable_temperature_gets_gradient() -> None:
    img, txt = _unit(5, 4, seed=7), _unit(5, 4, seed=8)
    tau = torch.tensor(0.2, requires_grad=True)
    loss = clip_loss(img, txt, tau)
    assert float(loss.detach()) == pytest.approx(float(clip_loss(img, txt, 0.2)), abs=1e-6)
    loss.backward()
    assert tau.grad is not None and torch.isfinite(tau.grad)


def test_clip_unnormalised_inputs_error_or_normalise() -> None:
    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(5, 4, generator=g) * 3, torch.randn(5, 4, generator=g)
    with pytest.raises(ValueError, match="`image` must be L2-normalised"):
        clip_loss(x, F.normalize(y, dim=-1))
    got = clip_loss(x, y, normalize=True)
    torch.testing.assert_close(got, clip_loss(F.normalize(x, dim=-1), F.normalize(y, dim=-1)))


def test_clip_fp16_and_autocast_compute_in_fp32() -> None:
    img, txt = _unit(6, 8, seed=10), _unit(6, 8, seed=11)
    ref = clip_loss(img.half().float(), txt.half().float(), 0.1)
    got = clip_loss(img.half(), txt.half(), 0.1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = clip_loss(img, txt, 0.1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, clip_loss(img, txt, 0.1))


def test_clip_bad_input() -> None:
    img, txt = _unit(5, 4, seed=12), _unit(5, 4, seed=13)
    with pytest.raises(ValueError, match="length mismatch"):
        clip_loss(img, txt[:4])
    with pytest.raises(ValueError, match="same embedding dimension"):
        clip_loss(img, _unit(5, 3))
    with pytest.raises(ValueError, match="temperature"):
        clip_loss(img, txt, 0.0)
    with pytest.raises(ValueError, match="`text` must be 2-D"):
        clip_loss(img, txt[0])
    bad = txt.clone()
    bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match="`text` contains"):
        clip_loss(img, bad)


# ------------------------------------------------------------------------------------ m2-mix


def test_m2mix_lambda_zero_image_anchor_is_clip_image_to_text() -> None:
    img, txt = _unit(8, 6, seed=14), _unit(8, 6, seed=15)
    ce_img, _ = m2mix_anchor_terms(img, txt, 0.0, mix_temperature=0.07)
    li, _, t = clip_logits(img, txt, 0.07)
    torch.testing.assert_close(ce_img, F.cross_entropy(li, t))


def test_m2mix_lambda_one_text_anchor_is_clip_text_to_image() -> None:
    img, txt = _unit(8, 6, seed=16), _unit(8, 6, seed=17)
    _, ce_txt = m2mix_anchor_terms(img, txt, 1.0, mix_temperature=0.07)
    _, lt, t = clip_logits(img, txt, 0.07)
    torch.testing.assert_close(ce_txt, F.cross_entropy(lt, t))


@pytest.mark.parametrize("lam", [0.2, 0.5, 0.85])
def test_m2mix_matches_loop_reference(lam: float) -> None:
    img, txt = _unit(6, 5, seed=18), _unit(6, 5, seed=19)
    ref_i, ref_t = _m2mix_reference(img, txt, lam, 0.07)
    ce_i, ce_t = m2mix_anchor_terms(img, txt, lam)
    assert float(ce_i) == pytest.approx(ref_i, abs=1e-4)
    assert float(ce_t) == pytest.approx(ref_t, abs=1e-4)
    assert float(m2mix_term(img, txt, lam)) == pytest.approx(ref_i + ref_t, abs=2e-4)
    mean = m2mix_term(img, txt, lam, reduction="mean")
    assert float(mean) == pytest.approx(0.5 * (ref_i + ref_t), abs=1e-4)


def test_m2mix_per_row_lambda() -> None:
    img, txt = _unit(4, 5, seed=20), _unit(4, 5, seed=21)
    same = m2mix_term(img, txt, torch.full((4,), 0.3))
    torch.testing.assert_close(same, m2mix_term(img, txt, 0.3))


def test_m2mix_detach_mix_blocks_gradient_through_mixtures() -> None:
    img0, txt0 = _unit(5, 4, seed=22), _unit(5, 4, seed=23)
    img = img0.clone().requires_grad_(True)
    txt = txt0.clone().requires_grad_(True)
    m2mix_term(img, txt, 0.4, detach_mix=True).backward()
    # Manual: the mixtures are constants.
    img2 = img0.clone().requires_grad_(True)
    txt2 = txt0.clone().requires_grad_(True)
    mix = slerp(img0, txt0, 0.4)
    ce = 0.0
    for anchor, pos in ((img2, txt2), (txt2, img2)):
        logits = anchor @ mix.T
        logits = logits - torch.diag(torch.diagonal(logits)) + torch.diag((anchor * pos).sum(-1))
        ce = ce + F.cross_entropy(logits / 0.07, torch.arange(5))
    ce.backward()
    torch.testing.assert_close(img.grad, img2.grad)
    torch.testing.assert_close(txt.grad, txt2.grad)
    # Not detached: the gradient differs (it also flows through the mixtures).
    img3 = img0.clone().requires_grad_(True)
    m2mix_term(img3, txt0, 0.4).backward()
    assert not torch.allclose(img3.grad, img.grad)


def test_unimodal_mix_reductions_and_reference() -> None:
    img, txt = _unit(6, 5, seed=24), _unit(6, 5, seed=25)
    li, lt, t = clip_logits(img, txt, 0.07)
    torch.testing.assert_close(unimodal_mix_loss(img, txt, 1.0), F.cross_entropy(li, t))
    torch.testing.assert_close(unimodal_mix_loss(txt, img, 1.0), F.cross_entropy(lt, t))
    lam, b = 0.3, 6
    partner = [(i - 1) % b for i in range(b)]
    mixed = slerp(img, img[partner], lam)
    total = 0.0
    for i in range(b):
        row = [_dot(mixed[i], txt[j]) / 0.07 for j in range(b)]
        m = max(row)
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        total += lam * (lse - row[i]) + (1 - lam) * (lse - row[partner[i]])
    assert float(unimodal_mix_loss(img, txt, lam)) == pytest.approx(total / b, abs=1e-4)


def test_m2mix_gradients_finite_even_for_identical_pairs() -> None:
    img = _unit(4, 6, seed=26).requires_grad_(True)
    txt = img.detach().clone().requires_grad_(True)
    loss = m2mix_term(img, txt, 0.5)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(img.grad).all() and torch.isfinite(txt.grad).all()


def test_m2mix_bad_input() -> None:
    img, txt = _unit(5, 4, seed=27), _unit(5, 4, seed=28)
    with pytest.raises(ValueError, match="length mismatch"):
        m2mix_term(img, txt[:3], 0.5)
    with pytest.raises(ValueError, match="lam"):
        m2mix_term(img, txt, 1.2)
    with pytest.raises(ValueError, match="mix_temperature"):
        m2mix_term(img, txt, 0.5, mix_temperature=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        m2mix_term(img, txt, 0.5, reduction="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="L2-normalised"):
        m2mix_term(img * 2, txt, 0.5)
    with pytest.raises(ValueError, match="antipodal"):
        m2mix_term(img, -img, 0.5)


# -------------------------------------------------------------------------------- M2MixLoss


def test_m2mix_module_total_and_schedule() -> None:
    # the 1 / (epoch + 1) schedule is the method's; the loss takes the coefficient
    from contrastmix.methods.m2mix import mix_coefficient

    img, txt = _unit(6, 5, seed=29), _unit(6, 5, seed=30)
    mod = M2MixLoss(temperature=0.05, mix_temperature=0.07, weight=0.02)
    for epoch in (0, 3):
        out = mod.compute(img, txt, coef=mix_coefficient(epoch), lam=0.35)
        expect = clip_loss(img, txt, 0.05) + 0.02 / (epoch + 1) * m2mix_term(img, txt, 0.35)
        torch.testing.assert_close(out.loss, expect)
        assert out.coef == pytest.approx(1 / (epoch + 1))
    assert mix_coefficient(5, scheduled=False) == 1.0
    flat = M2MixLoss(weight=0.02).compute(img, txt, coef=mix_coefficient(5, False), lam=0.35)
    assert flat.coef == 1.0
    torch.testing.assert_close(flat.m2, m2mix_term(img, txt, 0.35))
    off = mod.compute(img, txt, coef=0.0)  # no mixed term, no lam drawn
    torch.testing.assert_close(off.loss, clip_loss(img, txt, 0.05))
    assert math.isnan(off.lam)
    with pytest.raises(ValueError, match="epoch"):
        mix_coefficient(-1)


def test_m2mix_module_lambda_draws_follow_generator_and_beta() -> None:
    img, txt = _unit(6, 5, seed=31), _unit(6, 5, seed=32)
    mod = M2MixLoss()
    a = mod.compute(img, txt, generator=torch.Generator().manual_seed(3))
    b = mod.compute(img, txt, generator=torch.Generator().manual_seed(3))
    assert a.lam == b.lam
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.loss, mod.compute(img, txt, lam=a.lam).loss)
    g = torch.Generator().manual_seed(0)
    lams = torch.tensor([mod.sample_lam(g) for _ in range(4000)])
    assert float(lams.min()) >= 0 and float(lams.max()) <= 1
    assert float(lams.mean()) == pytest.approx(0.5, abs=0.03)
    # Beta(0.5, 0.5) is U-shaped: P(lam < 0.1 or lam > 0.9) = 4/pi * asin(sqrt(0.1)) ~ 0.410
    tails = float(((lams < 0.1) | (lams > 0.9)).float().mean())
    assert tails == pytest.approx(0.410, abs=0.03)


def test_m2mix_module_unimodal_terms() -> None:
    img, txt = _unit(6, 5, seed=33), _unit(6, 5, seed=34)
    mod = M2MixLoss(weight=0.01, vmix_weight=0.1, lmix_weight=0.2)
    out = mod.compute(img, txt, lam=0.6)
    torch.testing.assert_close(out.vmix, unimodal_mix_loss(img, txt, 0.6))
    torch.testing.assert_close(out.lmix, unimodal_mix_loss(txt, img, 0.6))
    expect = out.clip + 0.01 * out.m2 + 0.1 * out.vmix + 0.2 * out.lmix
    torch.testing.assert_close(out.loss, expect)


def test_m2mix_module_backward_finite() -> None:
    img = _unit(8, 6, seed=35).requires_grad_(True)
    txt = _unit(8, 6, seed=36).requires_grad_(True)
    loss = M2MixLoss(vmix_weight=0.1)(img, txt, generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert torch.isfinite(img.grad).all() and torch.isfinite(txt.grad).all()


def test_m2mix_module_bad_hyper_parameters() -> None:
    with pytest.raises(ValueError, match="temperature"):
        M2MixLoss(temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        M2MixLoss(alpha=0)
    with pytest.raises(ValueError, match="weight"):
        M2MixLoss(weight=-0.1)
    with pytest.raises(ValueError, match="reduction"):
        M2MixLoss(reduction="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="coef"):
        M2MixLoss()(_unit(3, 2), _unit(3, 2, seed=1), coef=-1)


# ------------------------------------------------------------------------- two-tower model


def _tiny_towers():
    from torch import nn

    from contrastmix.models.multimodal import TwoTower

    torch.manual_seed(0)
    image_enc = nn.Sequential(nn.Flatten(), nn.Linear(64, 16))
    text_enc = nn.Embedding(10, 12)  # "captions" are class ids here
    return TwoTower(image_enc, text_enc, image_dim=16, proj_dim=8, text_dim=12)


def test_two_tower_normalised_embeddings_and_training_step() -> None:
    model = _tiny_towers()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 1, 8, 8, generator=g), torch.arange(6)
    img, txt = model(x, y)
    assert img.shape == txt.shape == (6, 8)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(6))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(6))
    loss = M2MixLoss()(img, txt, generator=g)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    logits = model.zero_shot_logits(x, torch.arange(10))
    assert logits.shape == (6, 10)


def test_two_tower_learnable_temperature_and_errors() -> None:
    from torch import nn

    from contrastmix.models.multimodal import TwoTower

    enc = nn.Sequential(nn.Flatten(), nn.Linear(4, 8))
    model = TwoTower(
        enc, nn.Linear(3, 8), 8, 8, text_dim=8, learn_temperature=True, temperature=0.1
    )
    assert isinstance(model.text_projection, nn.Identity)
    assert float(model.temperature.detach()) == pytest.approx(0.1)
    img, txt = model(torch.rand(5, 4), torch.rand(5, 3))
    clip_loss(img, txt, model.temperature).backward()
    assert model.log_temperature.grad is not None
    with pytest.raises(ValueError, match="output width of encoder `image_encoder`"):
        TwoTower(nn.Identity(), nn.Linear(3, 8), proj_dim=8, text_dim=3)
    with pytest.raises(ValueError, match="project_text"):
        TwoTower(enc, nn.Linear(3, 5), image_dim=8, proj_dim=8, text_dim=5, project_text=False)
    with pytest.raises(ValueError, match="image_encoder` must return"):
        TwoTower(enc, nn.Linear(3, 8), image_dim=9, proj_dim=8, text_dim=8).encode_image(
            torch.rand(2, 4)
        )
    with pytest.raises(ValueError, match="length mismatch"):
        model(torch.rand(5, 4), torch.rand(4, 3))
