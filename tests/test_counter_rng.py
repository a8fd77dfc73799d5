"""The counter-based uniform stream (contrastmix._counter_rng) behind the MoCHi draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contrastmix._counter_rng import (
    counter_uniform,
    counter_uniform_kernel,
    draw_seed,
    reference_uniform,
)


@pytest.mark.parametrize("seed", [0, 1, 937055941807507096, 2**63 - 1])
def test_torch_stream_equals_the_splitmix64_definition(seed: int) -> None:
    u = counter_uniform(torch.tensor(seed), 5, 13)
    want = torch.tensor([[reference_uniform(seed, r * 13 + t) for t in range(13)]
                         for r in range(5)], dtype=torch.float32)
    assert u.dtype == torch.float32
    assert torch.equal(u, want)


def test_numba_stream_equals_the_torch_stream() -> None:
    numba = pytest.importorskip("numba")
    uniform = counter_uniform_kernel()

    @numba.njit
    def fill(seed, out):  # type: ignore[no-untyped-def]
        for i in range(out.shape[0]):
            out[i] = uniform(seed, i)

    seed = draw_seed(torch.Generator().manual_seed(4), torch.device("cpu"))
    out = np.empty(4000, np.float32)
    fill(np.uint64(int(seed)), out)
    assert np.array_equal(out, counter_uniform(seed, 40, 100).view(-1).numpy())


def test_stream_is_uniform_on_the_float32_grid() -> None:
    u = counter_uniform(torch.tensor(12345), 1000, 1000).view(-1).double()
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert torch.equal(u * 2**24, (u * 2**24).round())  # multiples of 2^-24
    # chi-square over 100 equal bins: 99 degrees of freedom, 99.9 % quantile ~ 148
    counts = torch.histc(u, bins=100, min=0.0, max=1.0)
    chi2 = float(((counts - 1e4) ** 2 / 1e4).sum())
    assert chi2 < 148.0
    # neighbouring values are uncorrelated (a bad counter mix correlates them)
    corr = float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])
    assert abs(corr) < 5e-3


def test_seed_comes_from_the_generator() -> None:
    cpu = torch.device("cpu")
    a = draw_seed(torch.Generator().manual_seed(7), cpu)
    b = draw_seed(torch.Generator().manual_seed(7), cpu)
    c = draw_seed(torch.Generator().manual_seed(8), cpu)
    assert int(a) == int(b) != int(c)
    torch.manual_seed(3)
    d = draw_seed(None, cpu)
    torch.manual_seed(3)
    assert int(draw_seed(None, cpu)) == int(d)
    # different seeds give different streams
    assert not torch.equal(counter_uniform(a, 2, 8), counter_uniform(c, 2, 8))
