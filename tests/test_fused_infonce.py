"""fused_infonce (contrastmix.losses.fused_infonce) against F.cross_entropy of the
concatenated logits: value and gradient, masked entries, empty queue, bad use."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from contrastmix.losses.fused_infonce import fused_infonce, row_max
from contrastmix.mixing.mochi import _mochi_coefficients, synthetic_logits_from

D64 = torch.float64


def _parts(b: int, k: int, g: torch.Generator, dtype: torch.dtype = D64):
    pos = torch.randn(b, 1, generator=g, dtype=dtype) * 3
    real = torch.randn(b, k, generator=g, dtype=dtype) * 3
    return pos.requires_grad_(), real.requires_grad_()


def _reference(pos, real, syn=None):
    parts = [pos, real] + ([syn] if syn is not None else [])
    logits = torch.cat(parts, dim=1)
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long))


@pytest.mark.parametrize("dtype", [D64, torch.float32])
def test_plain_infonce_equals_cross_entropy(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    pos, real = _parts(6, 50, g, dtype)
    with torch.no_grad():
        real[1, ::3] = float("-inf")  # masked entries
        real[2] = float("-inf")  # a fully masked row: only the positive is left
    got = fused_infonce(pos, real)
    gp, gr = torch.autograd.grad(got, [pos, real])
    p2, r2 = pos.detach().clone().requires_grad_(), real.detach().clone().requires_grad_()
    want = _reference(p2, r2)
    wp, wr = torch.autograd.grad(want, [p2, r2])
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == D64 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(gp, wp, **tol)
    torch.testing.assert_close(gr, wr, **tol)
    assert torch.isfinite(gp).all() and torch.isfinite(gr).all()
    assert bool((gr[1, ::3] == 0).all()) and bool((gr[2] == 0).all())
    assert float(gp[2].detach()) == 0.0  # softmax of a lone positive is 1: no gradient


def test_empty_queue_gives_zero_loss() -> None:
    pos = torch.randn(4, 1, dtype=D64, requires_grad=True)
    real = torch.zeros(4, 0, dtype=D64, requires_grad=True)
    loss = fused_infonce(pos, real)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(pos.grad, torch.zeros_like(pos))
    assert torch.equal(row_max(real), torch.full((4,), float("-inf"), dtype=D64))


def test_with_synthetic_logits_equals_cross_entropy() -> None:
    g = torch.Generator().manual_seed(1)
    b, k, d = 5, 40, 8
    q = F.normalize(torch.randn(b, d, generator=g, dtype=D64), dim=1).requires_grad_()
    n = F.normalize(torch.randn(k, d, generator=g, dtype=D64), dim=1)
    key = F.normalize(torch.randn(b, d, generator=g, dtype=D64), dim=1)
    pos = (q * key).sum(1, keepdim=True) / 0.2
    real = q @ n.T / 0.2
    coef = _mochi_coefficients(q, n, real, 10, 12, 3, queue_ids=None, query_ids=None,
                               generator=torch.Generator().manual_seed(0), logit_scale=5.0)
    qq = (q * q.detach()).sum(1, keepdim=True)
    got = fused_infonce(pos, real, coef=coef, q_dot_qbar=qq)
    (g_got,) = torch.autograd.grad(got, q, retain_graph=True)
    want = _reference(pos, real, synthetic_logits_from(coef, real, qq))
    (g_want,) = torch.autograd.grad(want, q)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12)


def test_double_backward_raises_and_coef_needs_q_dot_qbar() -> None:
    pos, real = _parts(3, 7, torch.Generator().manual_seed(2))
    loss = fused_infonce(pos, real)
    (gp,) = torch.autograd.grad(loss, pos, create_graph=True)
    with pytest.raises(RuntimeError):
        gp.sum().backward()
    with pytest.raises(ValueError, match="q_dot_qbar"):
        fused_infonce(pos, real, q_dot_qbar=torch.zeros(3, 1, dtype=D64))
