"""contrastmix.sweeps: train-if-missing, the cached probe, mean ± std, paired intervals, tables.

Training and probing are replaced by fakes (``pretrain`` / ``probe_run`` monkeypatched), so
these tests only check the bookkeeping; the statistics are checked against numpy / scipy.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf

import contrastmix.eval.evaluate as evaluate
import contrastmix.train.pretrain as pretrain_mod
from contrastmix import sweeps
from contrastmix.errors import RecipeError, RunDirError
from contrastmix.recipe import load_recipe
from contrastmix.rundir import hold_run_dir

RECIPE = "l1_diabetes"  # any bundled recipe: nothing is trained


class FakePretrain:
    """Stands in for :func:`contrastmix.train.pretrain.pretrain`: writes config.yaml, then the
    checkpoint and (unless ``interrupt``) backbone.pt and run.json."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.interrupt = False

    def __call__(self, cfg: Any, out: Any, *, resume: bool = False,
                 extra_callbacks: Any = None) -> Path:
        out = Path(out)
        self.calls.append({"seed": cfg.seed, "resume": resume, "out": out,
                           "max_epochs": cfg.trainer.max_epochs,
                           "progress_bar": cfg.trainer.enable_progress_bar})
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        (out / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
        if not self.interrupt:
            (out / "backbone.pt").write_bytes(b"weights" * len(self.calls))
            (out / "run.json").write_text(json.dumps({"wall_time_s": 1.5, "epochs": 2}))
        return out


@pytest.fixture
def fake_pretrain(monkeypatch: pytest.MonkeyPatch) -> FakePretrain:
    fake = FakePretrain()
    monkeypatch.setattr(pretrain_mod, "pretrain", fake)
    return fake


# ---------------------------------------------------------------------------- train_if_missing
def test_trains_once_then_skips(tmp_path: Path, fake_pretrain: FakePretrain) -> None:
    out = tmp_path / "run"
    assert sweeps.train_if_missing(RECIPE, out, ["trainer.max_epochs=2"], seed=3) == out
    assert fake_pretrain.calls == [{"seed": 3, "resume": False, "out": out, "max_epochs": 2,
                                    "progress_bar": False}]
    assert sweeps.is_trained(out)
    assert sweeps.run_summary(out)["wall_time_s"] == 1.5
    sweeps.train_if_missing(RECIPE, out, ["trainer.max_epochs=2"], seed=3)
    assert len(fake_pretrain.calls) == 1  # backbone.pt exists: nothing trained


def test_seed_is_applied_after_the_overrides(tmp_path: Path,
                                             fake_pretrain: FakePretrain) -> None:
    sweeps.train_if_missing(RECIPE, tmp_path / "r", ["seed=99",
                                                     "trainer.enable_progress_bar=true"], seed=1)
    assert fake_pretrain.calls[0]["seed"] == 1
    assert fake_pretrain.calls[0]["progress_bar"] is True  # the caller's override wins


def test_resumes_an_interrupted_run(tmp_path: Path, fake_pretrain: FakePretrain) -> None:
    out = tmp_path / "run"
    fake_pretrain.interrupt = True
    sweeps.train_if_missing(RECIPE, out, [], seed=0)
    assert not sweeps.is_trained(out) and (out / "checkpoints" / "last.ckpt").is_file()
    fake_pretrain.interrupt = False
    sweeps.train_if_missing(RECIPE, out, [], seed=0)
    assert [c["resume"] for c in fake_pretrain.calls] == [False, True]
    assert sweeps.is_trained(out)


def test_another_recipe_in_the_run_directory_is_an_error(
    tmp_path: Path, fake_pretrain: FakePretrain
) -> None:
    out = tmp_path / "run"
    sweeps.train_if_missing(RECIPE, out, [], seed=0)
    with pytest.raises(RunDirError, match="another recipe or other overrides.*seed: 1"):
        sweeps.train_if_missing(RECIPE, out, [], seed=1)
    with pytest.raises(RunDirError, match="max_epochs"):
        sweeps.train_if_missing(RECIPE, out, ["trainer.max_epochs=1"], seed=0)
    assert len(fake_pretrain.calls) == 1
    sweeps.train_if_missing(RECIPE, out, [], seed=1, force=True)  # force: retrain
    assert [c["seed"] for c in fake_pretrain.calls] == [0, 1]


def test_force_retrains_a_finished_run(tmp_path: Path, fake_pretrain: FakePretrain) -> None:
    out = tmp_path / "run"
    sweeps.train_if_missing(RECIPE, out, [], seed=0)
    (out / "stale.txt").write_text("x")
    sweeps.train_if_missing(RECIPE, out, [], seed=0, force=True)
    assert len(fake_pretrain.calls) == 2 and not (out / "stale.txt").exists()


def test_a_run_that_died_before_its_checkpoint_starts_over(
    tmp_path: Path, fake_pretrain: FakePretrain
) -> None:
    out = tmp_path / "run"
    (out / "logs" / "version_0").mkdir(parents=True)
    (out / "config.yaml").write_text("old: true\n")
    sweeps.train_if_missing(RECIPE, out, [], seed=0)
    assert fake_pretrain.calls[0]["resume"] is False
    assert not (out / "logs").exists()  # the stale segment is not merged into metrics.csv


@pytest.mark.parametrize("force", [False, True])
def test_a_run_another_process_trains_is_never_deleted(
    tmp_path: Path, fake_pretrain: FakePretrain, force: bool
) -> None:
    # another sweep process is training this run (it holds the run folder's lock) and has not
    # reached its first checkpoint yet: neither "start over" nor --force may delete its files
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("old: true\n")
    with hold_run_dir(out):
        with pytest.raises(RunDirError, match="in use by another run"):
            sweeps.train_if_missing(RECIPE, out, [], seed=0, force=force)
        assert (out / "config.yaml").read_text() == "old: true\n"
    assert fake_pretrain.calls == []
    sweeps.train_if_missing(RECIPE, out, [], seed=0, force=force)  # released: it starts over
    assert len(fake_pretrain.calls) == 1


def test_a_directory_that_is_not_a_run_is_left_alone(
    tmp_path: Path, fake_pretrain: FakePretrain
) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="not a run directory"):
        sweeps.train_if_missing(RECIPE, tmp_path, [], seed=0)
    assert (tmp_path / "mine.txt").read_text() == "keep me" and fake_pretrain.calls == []


def test_a_bad_override_fails_before_anything_is_deleted(
    tmp_path: Path, fake_pretrain: FakePretrain
) -> None:
    out = tmp_path / "run"
    sweeps.train_if_missing(RECIPE, out, [], seed=0)
    with pytest.raises(RecipeError):
        sweeps.train_if_missing(RECIPE, out, ["trainer.no_such_key=1"], seed=0, force=True)
    assert sweeps.is_trained(out)


def test_cli_mode_runs_this_interpreter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], capture_output: bool, text: bool) -> Any:
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "boom")

    monkeypatch.setattr(sweeps.subprocess, "run", fake_run)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        sweeps.train_if_missing(RECIPE, out, ["trainer.max_epochs=1"], seed=2, cli=True)
    cmd = seen[0]
    assert cmd[:5] == [sys.executable, "-m", "contrastmix.cli", "pretrain", RECIPE]
    assert cmd[5:7] == ["--out", str(out)] and "--resume" not in cmd
    assert cmd[cmd.index("--set") + 1:] == ["trainer.enable_progress_bar=false",
                                            "trainer.max_epochs=1", "seed=2"]


def test_run_dir_for(tmp_path: Path) -> None:
    assert sweeps.run_dir_for(tmp_path, "moco_mnist1d", 2) == tmp_path / "moco_mnist1d_seed2"


# ---------------------------------------------------------------------------- probe
def test_probe_is_cached_per_kwargs_and_backbone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple] = []

    def fake_probe_run(run_dir: Any, **kw: Any) -> dict:
        calls.append((Path(run_dir), kw))
        return {"accuracy": 0.5 + 0.1 * len(calls), **({"knn_accuracy": 0.4} if kw else {})}

    monkeypatch.setattr(evaluate, "probe_run", fake_probe_run)
    run = tmp_path / "run"
    run.mkdir()
    (run / "backbone.pt").write_bytes(b"w1")
    first = sweeps.probe(run)
    assert first == {"accuracy": 0.6}
    assert sweeps.probe(run) == first and len(calls) == 1  # read back
    knn = sweeps.probe(run, knn=True)
    assert knn["knn_accuracy"] == 0.4 and len(calls) == 2  # other kwargs: another entry
    assert sweeps.probe(run, knn=True) == knn and sweeps.probe(run) == first
    assert len(calls) == 2
    cache = json.loads((run / sweeps.PROBE_CACHE).read_text())
    assert set(cache["probes"]) == {"{}", '{"knn": true}'}
    # a retrained backbone (other size) is probed again
    (run / "backbone.pt").write_bytes(b"retrained")
    assert sweeps.probe(run)["accuracy"] == pytest.approx(0.8) and len(calls) == 3


def test_probe_ignores_a_cache_of_another_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evaluate, "probe_run", lambda run_dir, **kw: {"mae": 1.0})
    run = tmp_path / "run"
    run.mkdir()
    (run / "backbone.pt").write_bytes(b"w")
    (run / sweeps.PROBE_CACHE).write_text(json.dumps({"mae": 9.0, "train_wall_s": 3}))
    assert sweeps.probe(run) == {"mae": 1.0}
    (run / sweeps.PROBE_CACHE).write_text("{not json")
    assert sweeps.probe(run) == {"mae": 1.0}


# ---------------------------------------------------------------------------- statistics
def test_mean_std_matches_numpy() -> None:
    xs = [0.871, 0.902, 0.876, 0.889]
    m, s = sweeps.mean_std(xs)
    assert m == pytest.approx(np.mean(xs), abs=1e-15)
    assert s == pytest.approx(np.std(xs, ddof=1), abs=1e-15)
    assert sweeps.mean_std([1.0, None, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    m1, s1 = sweeps.mean_std([0.5])
    assert m1 == 0.5 and math.isnan(s1)
    assert all(math.isnan(v) for v in sweeps.mean_std([]))
    assert all(math.isnan(v) for v in sweeps.mean_std([None]))


def test_format_mean_std() -> None:
    assert sweeps.format_mean_std([0.9, 0.88, 0.87], 3) == "0.883 ± 0.015"
    assert sweeps.format_mean_std([1.0, 2.0], 2) == "1.50 ± 0.71"
    assert sweeps.format_mean_std([0.88312], 3) == "0.883 ± n/a"
    assert sweeps.format_mean_std([], 3) == "n/a"
    assert sweeps.format_mean_std([None, None]) == "n/a"


def test_paired_difference_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    a = [0.91, 0.87, 0.93, 0.90, 0.88]
    b = [0.89, 0.86, 0.90, 0.90, 0.85]
    m, s, (lo, hi) = sweeps.paired_difference(a, b)
    d = np.subtract(a, b)
    assert m == pytest.approx(d.mean(), abs=1e-15)
    assert s == pytest.approx(d.std(ddof=1), abs=1e-15)
    want = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert (lo, hi) == pytest.approx(want, abs=1e-12)
    # the same as a paired t-test: the 95 % interval excludes 0 exactly when p < 0.05
    p = stats.ttest_rel(a, b).pvalue
    assert (lo > 0) == (p < 0.05)
    # 90 % is narrower
    _, _, (lo90, hi90) = sweeps.paired_difference(a, b, confidence=0.9)
    assert lo < lo90 < hi90 < hi


def test_paired_difference_by_hand() -> None:
    # d = [1, 2, 3]: mean 2, std 1, t_{0.975, 2} = 4.302652729749464
    m, s, (lo, hi) = sweeps.paired_difference([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)
    assert (m, s) == (2.0, 1.0)
    assert (lo, hi) == pytest.approx((2 - half, 2 + half), abs=1e-12)


def test_paired_difference_edge_cases() -> None:
    m, s, (lo, hi) = sweeps.paired_difference([1.0], [0.25])
    assert m == 0.75 and math.isnan(s) and math.isnan(lo) and math.isnan(hi)
    m, s, _ = sweeps.paired_difference([1.0, None, 3.0], [0.0, 5.0, 1.0])  # a missing seed
    assert (m, s) == (1.5, pytest.approx(math.sqrt(0.5)))
    with pytest.raises(ValueError, match="equal lengths"):
        sweeps.paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        sweeps.paired_difference([1.0, 2.0], [1.0, 1.0], confidence=95)


def test_format_paired_difference() -> None:
    half = 4.302652729749464 / math.sqrt(3)
    text = sweeps.format_paired_difference([2.0, 4.0, 6.0], [1.0, 2.0, 3.0], 2)
    assert text == f"+2.00 ± 1.00 [{2 - half:+.2f}, {2 + half:+.2f}]"
    assert sweeps.format_paired_difference([1.0], [1.5], 2) == "-0.50 ± n/a"
    assert sweeps.format_paired_difference([], [], 2) == "n/a"


# ---------------------------------------------------------------------------- tables
def test_markdown_table() -> None:
    text = sweeps.markdown_table(
        [{"method": "MoCo", "acc": "0.88 ± 0.01"}, {"method": "a|b", "acc": None},
         ["MoCHi", 0.9]],
        ["method", "acc"],
    )
    assert text.splitlines() == [
        "| method | acc |",
        "|---|---|",
        "| MoCo | 0.88 ± 0.01 |",
        "| a\\|b |  |",
        "| MoCHi | 0.9 |",
    ]
    with pytest.raises(ValueError, match="2 columns"):
        sweeps.markdown_table([[1, 2, 3]], ["a", "b"])
    assert sweeps.markdown_table([], ["a"]) == "| a |\n|---|"


def test_reproduce_command() -> None:
    script = "/somewhere/repo/benchmarks/sweeps/seed_sweep.py"
    assert (sweeps.reproduce_command(script, ["--recipes", "moco_mnist1d", "--set", "a=b c"])
            == "python benchmarks/sweeps/seed_sweep.py --recipes moco_mnist1d --set 'a=b c'")
    assert sweeps.reproduce_command("x.py", []) == "python x.py"


def test_recipe_loads_for_the_fakes() -> None:
    """The fakes above rely on the bundled recipe (no training happens)."""
    assert load_recipe(RECIPE, ["seed=4"]).seed == 4


def test_importing_sweeps_stays_light() -> None:
    code = ("import sys, contrastmix.sweeps\n"
            "print(any(m.startswith(('contrastmix.train', 'contrastmix.methods', "
            "'pytorch_lightning')) for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
