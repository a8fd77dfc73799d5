"""numba is an optional CPU accelerator: without it (``import numba`` raising ImportError) the
MoCHi loss and the kNN classifier run on the torch reference path and give the results the
numba kernels give in this process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from contrastmix._numba import numba_enabled

# Shared by both sides: the MoCHi loss (float32 CPU, with ids; draws from a seeded
# generator), its gradient and proxy accuracy, the draws, and kNN scores.
_COMPUTE = textwrap.dedent("""
    import torch
    import torch.nn.functional as F

    from contrastmix.eval.knn import knn_scores
    from contrastmix.losses.mochi import MoCHiLoss
    from contrastmix.mixing.mochi import mochi_draws


    def compute(knn_backend):
        g = torch.Generator().manual_seed(0)
        unit = lambda n, d: F.normalize(torch.randn(n, d, generator=g), dim=1)  # noqa: E731
        b, k, d = 16, 400, 32
        q = unit(b, d).requires_grad_()
        key, queue = unit(b, d), unit(k, d)
        ids = {"queue_ids": torch.randint(0, 40, (k,), generator=g),
               "query_ids": torch.arange(b)}
        loss_fn = MoCHiLoss(0.2, num_hard=64, num_mix=96, num_query_mix=16)
        loss = loss_fn(q, key, queue, generator=torch.Generator().manual_seed(1), **ids)
        loss.backward()
        draws = mochi_draws((q @ queue.T).detach(), 64, 96, 16,
                            generator=torch.Generator().manual_seed(2), **ids)
        bank, test = unit(3000, 24), unit(500, 24)
        labels = torch.randint(0, 7, (3000,), generator=g)
        scores = knn_scores(bank, labels, test, k=20, backend=knn_backend)
        return {"loss": loss.detach(), "grad": q.grad, "proxy": loss_fn.last_proxy,
                "positions": draws.positions, "alpha": draws.alpha, "beta": draws.beta,
                "valid": draws.valid, "knn": scores}
""")

_BLOCKED = textwrap.dedent("""
    import importlib.abc
    import sys


    class _NoNumba(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("numba", "llvmlite"):
                raise ImportError(f"{name} is blocked in this test")
            return None


    sys.meta_path.insert(0, _NoNumba())
    exec(compile(COMPUTE, "compute", "exec"))

    import pytest
    from contrastmix._numba import numba_enabled
    from contrastmix.eval._knn_rescore import bf16_matmul_available
    from contrastmix.eval.knn import knn_scores
    from contrastmix.mixing import mochi

    out = compute("auto")
    assert not numba_enabled() and not bf16_matmul_available()
    assert mochi._numba_kernels() is None
    x = torch.nn.functional.normalize(torch.randn(10, 4), dim=1)
    with pytest.raises(ValueError, match="numba"):
        knn_scores(x, torch.zeros(10, dtype=torch.long), x, k=3, backend="bf16")
    assert not [m for m in sys.modules if m.split(".")[0] in ("numba", "llvmlite")]
    torch.save(out, sys.argv[1])
""")


def test_results_without_numba_equal_the_numba_results(tmp_path) -> None:
    path = tmp_path / "no_numba.pt"
    env = {k: v for k, v in os.environ.items() if k != "CONTRASTMIX_NUMBA"}
    script = f"COMPUTE = {_COMPUTE!r}\n{_BLOCKED}"
    run = subprocess.run([sys.executable, "-c", script, str(path)], env=env, text=True,
                         capture_output=True, timeout=300, cwd=os.getcwd())
    assert run.returncode == 0, run.stdout + run.stderr
    without = torch.load(path)

    if not numba_enabled():
        pytest.skip("numba is not installed here: nothing to compare with")
    from contrastmix.eval._knn_rescore import bf16_matmul_available
    from contrastmix.mixing import mochi

    assert mochi.USE_NUMBA and mochi._numba_kernels() is not None
    scope: dict = {}
    exec(compile(_COMPUTE, "compute", "exec"), scope)
    with_numba = scope["compute"]("bf16" if bf16_matmul_available() else "torch")
    # same counter-based draws: identical positions and weights
    for name in ("positions", "alpha", "beta", "valid", "proxy"):
        assert torch.equal(with_numba[name], without[name]), name
    torch.testing.assert_close(with_numba["loss"], without["loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(with_numba["grad"], without["grad"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(with_numba["knn"], without["knn"], rtol=1e-5, atol=1e-6)
