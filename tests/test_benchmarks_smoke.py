"""The benchmark scripts run: each speed benchmark in its ``--quick`` mode prints a ratio.

``benchmarks/speed/`` holds micro-benchmarks (a baseline timed in the same run, one ratio);
``benchmarks/sweeps/`` holds the result sweeps (train over seeds, probe, mean ± std tables,
through :mod:`contrastmix.sweeps`). Scripts run with the package installed: no ``sys.path``
edits, no ``.venv`` paths.

The subprocess runs are ``slow``: about 40 s in all on 2 idle cores, 65 s on 2 loaded ones
(``mochi_overhead`` ~10-20 s of it, most of that importing the methods and Lightning). To keep
them there, ``bank_search`` times the IVF backend only (HNSW's graph build alone takes ~5 s at
the quick size), ``knn_speed`` the torch backend only and ``probe_speed`` one round. The sweeps
are only started with ``--help`` here: their ``--quick`` runs train models (20-60 s each; run
``python benchmarks/sweeps/<name>.py --quick`` by hand).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEED = ROOT / "benchmarks" / "speed"
SWEEPS = ROOT / "benchmarks" / "sweeps"

#: script -> (extra arguments after --quick --json, the ratio it reports)
SPEED_RUNS: dict[str, tuple[list[str], Callable[[dict[str, Any]], float]]] = {
    "bank_search": (["--backends", "faiss-ivf"],
                    lambda r: r["approximate"][0]["speedup_median"]),
    "knn_speed": (["--backends", "torch"], lambda r: r["torch_speedup"]),
    "probe_speed": (["--rounds", "1"], lambda r: r["speedup"]),
    "supremix_memory": ([], lambda r: r["peak_ratio"]),
    "text_cache": ([], lambda r: r["first_epoch_speedup"]),
    "mochi_overhead": ([], lambda r: r["ratio_fast"] * r["train_step_ratio"]),
}


def test_every_script_is_in_its_folder() -> None:
    assert sorted(p.stem for p in SPEED.glob("*.py")) == sorted(SPEED_RUNS)
    assert sorted(p.stem for p in SWEEPS.glob("*.py")) == sorted(
        ["seed_sweep", "regression_results", "multimodal_results", "collapse_curves"])
    assert not list((ROOT / "benchmarks").glob("*.py"))  # nothing left at the top


@pytest.mark.parametrize("script", sorted((ROOT / "benchmarks").rglob("*.py")),
                         ids=lambda p: p.stem)
def test_scripts_need_no_path_edits(script: Path) -> None:
    text = script.read_text()
    assert "sys.path" not in text
    assert ".venv" not in text
    # documented commands name the script where it lives
    for cmd in re.findall(r"python (benchmarks/\S+\.py)", text):
        assert (ROOT / cmd).is_file(), cmd


@pytest.mark.parametrize("script", sorted(SWEEPS.glob("*.py")), ids=lambda p: p.stem)
def test_sweeps_use_the_shared_helpers(script: Path) -> None:
    text = script.read_text()
    assert "from contrastmix.sweeps import" in text
    assert "train_if_missing" in text
    for own in ("statistics.stdev", "def _mean_std", "probe_run(", "pretrain(cfg"):
        assert own not in text, f"{script.name} has its own {own}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SPEED_RUNS))
def test_speed_benchmark_quick(name: str) -> None:
    if name == "text_cache" and importlib.util.find_spec("sentence_transformers") is None:
        pytest.skip("text_cache needs sentence-transformers (pip install contrastmix[text])")
    extra, ratio = SPEED_RUNS[name]
    res = subprocess.run(
        [sys.executable, str(SPEED / f"{name}.py"), "--quick", "--json", *extra],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    value = ratio(json.loads(res.stdout))
    assert math.isfinite(value) and value > 0


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SWEEPS.glob("*.py")), ids=lambda p: p.stem)
def test_sweep_help(script: Path) -> None:
    res = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "--quick" in res.stdout
