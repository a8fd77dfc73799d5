"""Tests of contrastmix.mixing.slerp (docs/methods.md §5 slerp convention)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from contrastmix.mixing.slerp import slerp


def _unit(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1).to(dtype)


def _angle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = x.double(), y.double()
    return torch.acos(((x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))).clamp(-1, 1))


def _reference(a: torch.Tensor, b: torch.Tensor, lam: list[float]) -> torch.Tensor:
    """Explicit per-row loop of m_lam(a, b) = a sin(lam t)/sin t + b sin((1-lam) t)/sin t."""
    out = torch.empty(a.shape, dtype=torch.float64)
    for i in range(a.shape[0]):
        ai, bi = a[i].double(), b[i].double()
        t = math.acos(float((ai * bi).sum()))
        s = math.sin(t)
        out[i] = ai * (math.sin(lam[i] * t) / s) + bi * (math.sin((1 - lam[i]) * t) / s)
    return out


def test_end_points_lambda_weights_first_argument() -> None:
    a, b = _unit(6, 5, seed=1), _unit(6, 5, seed=2)
    torch.testing.assert_close(slerp(a, b, 1.0), a, atol=1e-6, rtol=0)
    torch.testing.assert_close(slerp(a, b, 0.0), b, atol=1e-6, rtol=0)


def test_matches_brute_force_reference_and_angles() -> None:
    a, b = _unit(8, 7, seed=3), _unit(8, 7, seed=4)
    lam = torch.linspace(0.05, 0.95, 8)
    m = slerp(a, b, lam)
    torch.testing.assert_close(m.double(), _reference(a, b, lam.tolist()), atol=1e-5, rtol=0)
    # unit norm
    torch.testing.assert_close(m.norm(dim=-1), torch.ones(8), atol=1e-5, rtol=0)
    theta = _angle(a, b)
    torch.testing.assert_close(_angle(m, a), (1 - lam.double()) * theta, atol=1e-4, rtol=0)
    torch.testing.assert_close(_angle(m, b), lam.double() * theta, atol=1e-4, rtol=0)


def test_midpoint_is_normalised_sum() -> None:
    a, b = _unit(5, 4, seed=5), _unit(5, 4, seed=6)
    torch.testing.assert_close(slerp(a, b, 0.5), F.normalize(a + b, dim=-1), atol=1e-6, rtol=0)


def test_row_lambda_equals_scalar_calls() -> None:
    a, b = _unit(4, 3, seed=7), _unit(4, 3, seed=8)
    lam = torch.tensor([0.1, 0.4, 0.7, 1.0])
    rows = torch.stack([slerp(a[i : i + 1], b[i : i + 1], float(lam[i]))[0] for i in range(4)])
    torch.testing.assert_close(slerp(a, b, lam), rows)


def test_one_dimensional_inputs() -> None:
    a, b = _unit(6, seed=9), _unit(6, seed=10)
    m = slerp(a, b, 0.3)
    assert m.shape == (6,)
    ref = _reference(a[None], b[None], [0.3])[0]
    torch.testing.assert_close(m.double(), ref, atol=1e-6, rtol=0)


def test_identical_inputs_return_a_without_nan() -> None:
    a = _unit(4, 6, seed=11).requires_grad_(True)
    b = a.detach().clone().requires_grad_(True)
    m = slerp(a, b, torch.tensor([0.0, 0.3, 0.5, 1.0]))
    torch.testing.assert_close(m, a.detach(), atol=1e-6, rtol=0)
    (m * torch.randn_like(m)).sum().backward()
    assert a.grad is not None and b.grad is not None
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_nlerp_fallback_branch_is_finite_and_linear() -> None:
    # eps > 1 forces the normalised-linear fallback on every row.
    a = _unit(3, 4, seed=12).requires_grad_(True)
    b = _unit(3, 4, seed=13)
    m = slerp(a, b, 0.25, eps=2.0)
    torch.testing.assert_close(m, F.normalize(0.25 * a + 0.75 * b, dim=-1))
    m.sum().backward()
    assert torch.isfinite(a.grad).all()


def test_near_identical_inputs_are_finite() -> None:
    a = _unit(3, 8, seed=14, dtype=torch.float64)
    b = F.normalize(a + 1e-9 * _unit(3, 8, seed=15, dtype=torch.float64), dim=-1)
    a.requires_grad_(True)
    m = slerp(a, b, 0.4)
    assert torch.isfinite(m).all()
    torch.testing.assert_close(m.detach(), a.detach(), atol=1e-7, rtol=0)
    m.sum().backward()
    assert torch.isfinite(a.grad).all()


def test_antipodal_raises_naming_rows() -> None:
    a = _unit(3, 4, seed=16)
    b = a.clone()
    b[2] = -a[2]
    with pytest.raises(ValueError, match=r"antipodal.*\[2\]"):
        slerp(a, b, 0.5)


def test_fp16_inputs_are_computed_in_fp32() -> None:
    a16 = _unit(6, 16, seed=17, dtype=torch.float16)
    b16 = _unit(6, 16, seed=18, dtype=torch.float16)
    m = slerp(a16, b16, 0.3)
    assert m.dtype == torch.float32
    a64, b64 = F.normalize(a16.double(), dim=-1), F.normalize(b16.double(), dim=-1)
    ref = _reference(a64, b64, [0.3] * 6)
    torch.testing.assert_close(m.double(), ref, atol=1e-6, rtol=0)
    assert torch.isfinite(m).all()


def test_autocast_keeps_fp32() -> None:
    a, b = _unit(4, 8, seed=19), _unit(4, 8, seed=20)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        m = slerp(a, b, 0.6)
    assert m.dtype == torch.float32
    torch.testing.assert_close(m, slerp(a, b, 0.6))


def test_float64_gradcheck() -> None:
    a = _unit(3, 4, seed=21, dtype=torch.float64).requires_grad_(True)
    b = _unit(3, 4, seed=22, dtype=torch.float64).requires_grad_(True)
    lam = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, y: slerp(x, y, lam), (a, b))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lam": 1.5}, "lam"),
        ({"lam": -0.1}, "lam"),
        ({"lam": torch.tensor([0.5, 0.5])}, "lam"),
        ({"lam": "half"}, "lam"),
    ],
)
def test_bad_lambda(kwargs: dict, match: str) -> None:
    a, b = _unit(3, 4, seed=23), _unit(3, 4, seed=24)
    with pytest.raises(ValueError, match=match):
        slerp(a, b, **kwargs)


def test_bad_inputs() -> None:
    a, b = _unit(3, 4, seed=25), _unit(3, 4, seed=26)
    with pytest.raises(ValueError, match="same shape"):
        slerp(a, b[:2], 0.5)
    with pytest.raises(ValueError, match="same shape"):
        slerp(a, _unit(3, 5), 0.5)
    with pytest.raises(ValueError, match="`a` must be L2-normalised"):
        slerp(2 * a, b, 0.5)
    nan = b.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="`b` contains"):
        slerp(a, nan, 0.5)
    with pytest.raises(ValueError, match="`a` must be a floating-point"):
        slerp(torch.ones(3, 1, dtype=torch.long), torch.ones(3, 1, dtype=torch.long), 0.5)
