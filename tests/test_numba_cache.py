"""The numba CPU kernels load from numba's disk cache in a new process (no recompilation).

numba keys its cache on a function's closure; a closure holding other jitted functions or an
intrinsic changes key in every process, and each run would then spend seconds compiling.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("numba")

_SCRIPT = """
import torch
import torch.nn.functional as F
from contrastmix.mixing.mochi import _pair_norms, mochi_draws
from contrastmix.eval._knn_rescore import rescored_topk
d = mochi_draws(torch.randn(8, 100), 10, 5, 2, generator=torch.Generator().manual_seed(0))
_pair_norms(F.normalize(torch.randn(100, 4), dim=1), d.pos_i, d.pos_j, d.alpha, 1 - d.alpha)
bank = F.normalize(torch.randn(300, 16), dim=1)
rescored_topk(bank, bank[:20].clone(), 5, 8)
"""


def _run() -> str:
    env = {**os.environ, "NUMBA_DEBUG_CACHE": "1"}
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    return out.stdout + out.stderr


def test_kernels_load_from_the_disk_cache_in_a_new_process() -> None:
    _run()  # compiles whatever is not cached yet
    log = _run()
    saved = [line for line in log.splitlines() if "data saved" in line]
    assert not saved, "recompiled in a new process:\n" + "\n".join(saved)
    for kernel in ("select_py", "pair_norms_py", "_rescored_py"):
        assert any("data loaded" in line and kernel in line for line in log.splitlines()), kernel
