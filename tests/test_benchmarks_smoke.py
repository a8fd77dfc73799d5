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
``python benchmarks/sweeps/<name>.py --quick`` by hand). ``benchmarks/gpu_check.py`` (the one
script at the top: it checks a machine, not one component) times the GPU paths; without a GPU
it prints one line and exits 0, which is checked here, and its parts run in-process on the CPU
at toy sizes.
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
        ["seed_sweep", "regression_results", "multimodal_results", "collapse_curves",
         "mochi_claims", "regression_claims", "shuffle_bn"])
    # nothing else at the top
    assert [p.name for p in (ROOT / "benchmarks").glob("*.py")] == ["gpu_check.py"]


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
    assert "train_if_missing" in text or "finished_run" in text  # the shared training helpers
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


def _gpu_check() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" /
                                                  "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_without_a_gpu_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    gpu_check = _gpu_check()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    out = capsys.readouterr()
    assert out.out == gpu_check.NO_GPU + "\n" and "no CUDA GPU found" in out.out
    assert out.err == ""
    assert gpu_check.main(["--json", "--device", "cuda:1"]) == 0
    assert capsys.readouterr().out.count("\n") == 1


def test_gpu_check_bank_and_probe_parts_on_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    gpu_check = _gpu_check()
    res = {"device": "cpu", "torch": "x",
           "bank_search": gpu_check.time_bank_search("cpu", size=2048, dim=16, batch=32, k=8,
                                                     repeats=1),
           "probe": gpu_check.time_probe("cpu", n=300, dim=8, classes=3, rounds=1,
                                         max_iter=10)}
    bank = res["bank_search"]
    assert bank["torch_s"] > 0 and bank["faiss-flat"]["recall_at_k"] == 1.0  # exact search
    assert 0 < bank["faiss-ivf"]["recall_at_k"] <= 1 and bank["faiss-ivf"]["speedup"] > 0
    assert math.isfinite(res["probe"]["cpu_over_device"])
    gpu_check._print(res)
    out = capsys.readouterr().out
    assert "faiss-flat:" in out and "ratio CPU/device" in out
    json.dumps(res)


@pytest.mark.slow
def test_gpu_check_train_steps_on_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    """The MoCo / MoCHi step of the check, shrunk (small CNN, 8x8 images, fp32: bf16 autocast
    on the CPU is slow and is not what the check times)."""
    gpu_check = _gpu_check()
    small = ["model.backbone=cnn2d", "model.width=4", "model.cifar_stem=false",
             "model.proj_hidden_dim=16", "model.proj_output_dim=8"]
    r = gpu_check.time_train_steps("cpu", batch=4, queue=64, rounds=1, repeats=1,
                                   image_size=8, bf16=False, mix=(16, 8, 4), overrides=small)
    assert math.isfinite(r["mochi_over_moco"]) and r["mochi_over_moco"] > 0
    assert all(math.isfinite(v) for v in r["losses"].values())
    gpu_check._print({"device": "cpu", "torch": "x", "train_step": r})
    assert "ratio MoCHi/MoCo" in capsys.readouterr().out
