"""contrastmix.train.allocator: freed blocks are reused without page faults (glibc)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from contrastmix.config import load_recipe

# a step's worth of [B, K] buffers (3 x 16 MiB) allocated, written and freed ten times; prints
# whether the settings were applied and the minor page faults per round
_SCRIPT = """
import resource, sys, torch
from contrastmix.train.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "1" else None
def step():
    bufs = [torch.empty(4 << 20).fill_(1.0) for _ in range(3)]
    del bufs
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def _faults(apply: bool, env: dict[str, str] | None = None) -> tuple[str, float]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    full_env.update(env or {})
    out = subprocess.run([sys.executable, "-c", _SCRIPT, "1" if apply else "0"],
                         capture_output=True, text=True, env=full_env, check=True)
    applied, faults = out.stdout.split()
    return applied, float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_keep_freed_memory_cuts_page_faults() -> None:
    _, default = _faults(False)
    applied, tuned = _faults(True)
    if applied != "True":
        pytest.skip("C library is not glibc")
    # 48 MiB freed per round is ~12k pages: glibc's defaults give most of them back to the OS
    assert default > 5000
    assert tuned < 0.6 * default


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_user_malloc_environment_wins() -> None:
    applied, _ = _faults(True, {"MALLOC_TRIM_THRESHOLD_": "1"})
    assert applied == "False"


def test_recipe_knob_defaults_on_and_can_be_turned_off() -> None:
    assert load_recipe("moco_mnist1d", []).trainer.keep_freed_memory is True
    cfg = load_recipe("moco_mnist1d", ["trainer.keep_freed_memory=false"])
    assert cfg.trainer.keep_freed_memory is False
