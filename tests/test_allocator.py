"""contrastmix.train.allocator: freed blocks are reused without page faults (glibc)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from contrastmix.recipe import load_recipe

# six 16 MiB blocks (a step's [B, K] buffers at queue 16384) allocated, written by two threads
# and freed, five rounds to settle, then the minor page faults of each of ten more rounds
_SCRIPT = """
import resource, sys, torch
from contrastmix.train.allocator import keep_freed_memory
torch.set_num_threads(2)
applied = keep_freed_memory() if sys.argv[1] == "1" else None
def step():
    bufs = [torch.empty(4 << 20).fill_(1.0) for _ in range(6)]
    del bufs
for _ in range(5):
    step()
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, sum(faults))
"""
PAGES_PER_ROUND = 6 * (16 << 20) // 4096


def _faults(apply: bool, env: dict[str, str] | None = None) -> tuple[str, int]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    full_env.update(env or {})
    out = subprocess.run([sys.executable, "-c", _SCRIPT, "1" if apply else "0"],
                         capture_output=True, text=True, env=full_env, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_keep_freed_memory_reuses_freed_blocks() -> None:
    # With glibc's defaults the same loop faulted every page in again in some processes
    # (24.5k faults a round) and none in others (its thresholds move with the frees), so only
    # the tuned process is checked: after it settles, a round reuses the heap's pages.
    applied, faults = _faults(True)
    if applied != "True":
        pytest.skip("C library is not glibc")
    assert faults < PAGES_PER_ROUND  # all ten rounds together: < one round's pages


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_user_malloc_environment_wins() -> None:
    applied, _ = _faults(True, {"MALLOC_TRIM_THRESHOLD_": "1"})
    assert applied == "False"


def test_no_recipe_knob_and_pretrain_leaves_malloc_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library call never changes malloc: only the CLI's --keep-freed-memory does."""
    from contrastmix.errors import RecipeError
    from contrastmix.train import allocator
    from contrastmix.train.pretrain import pretrain

    with pytest.raises(RecipeError, match="keep_freed_memory"):
        load_recipe("moco_mnist1d", ["trainer.keep_freed_memory=false"])
    calls: list[bool] = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(True) or True)
    cfg = load_recipe("moco_mnist1d", [
        "trainer.max_epochs=1", "trainer.limit_train_batches=1", "method.queue_size=256",
        "data.batch_size=128", "eval.knn_every_n_epochs=0", "trainer.enable_progress_bar=false",
    ])
    pretrain(cfg, tmp_path / "run")
    assert calls == []


@pytest.mark.parametrize("keep", [True, False])
def test_cli_option_applies_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: bool
) -> None:
    from contrastmix.cli import main
    from contrastmix.train import allocator

    calls: list[bool] = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(True) or True)
    argv = ["pretrain", "moco_mnist1d", "--out", str(tmp_path / "run"), "--set",
            "trainer.max_epochs=1", "trainer.limit_train_batches=1", "method.queue_size=256",
            "data.batch_size=128", "eval.knn_every_n_epochs=0",
            "trainer.enable_progress_bar=false"]
    assert main(argv + (["--keep-freed-memory"] if keep else [])) == 0
    assert calls == ([True] if keep else [])
