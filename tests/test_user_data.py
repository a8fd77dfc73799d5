"""Users' own data: ``table`` (CSV regression) and ``arrays`` (``.npz`` 1-D signals), through
the builders and the CLI (pretrain -> probe --json)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from contrastmix.cli import main
from contrastmix.data.bundles_user import build_arrays, build_table
from contrastmix.data.registry import DATASETS
from contrastmix.errors import DatasetError
from contrastmix.rundir import read_run_config

TINY = [
    "trainer.num_threads=1", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
    "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "model.width=8",
    "model.proj_hidden_dim=16", "model.proj_output_dim=8", "data.batch_size=32",
]
FEATURES = ["a", "b", "c", "d", "e"]



def _write_csv(path: Path, n: int = 300, *, bom: bool = False, seed: int = 0) -> Path:
    """``n`` rows of 5 numeric features (different scales) and a noisy linear target ``y``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)) * np.array([1.0, 10.0, 0.1, 100.0, 3.0]) + np.arange(5) * 7
    y = x @ np.array([1.0, -0.2, 5.0, 0.01, 0.3]) + 0.1 * rng.normal(size=n)
    lines = [",".join(FEATURES + ["y"])]
    lines += [",".join(f"{v:.6g}" for v in row) + f",{t:.6g}"
              for row, t in zip(x, y, strict=True)]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_npz(path: Path, *, labels: bool = True, **arrays: Any) -> Path:
    """300 signals ``[300, 1, 40]`` of 3 classes (a class-dependent sine plus noise)."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 100)
    x = rng.normal(scale=0.3, size=(300, 1, 40)).astype(np.float32)
    x[:, 0, :] += np.sin(np.linspace(0, 6, 40) * (1 + y[:, None]))
    content = {"x": x, "y": y} if labels else {"x": x}
    content.update(arrays)
    np.savez(path, **content)
    return path


def _cfg(name: str, path: Path | str | None, target: str | None = None, **options: Any
         ) -> SimpleNamespace:
    from contrastmix.config import SignalAugConfig

    return SimpleNamespace(name=name, path=None if path is None else str(path), target=target,
                           seed=0, options=options, signal_aug=SignalAugConfig())


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI expecting a user error; return its single stderr line."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("contrastmix: error: "), err
    return lines[0]


def _pretrain_probe(capsys: pytest.CaptureFixture[str], recipe: str, out: Path,
                    sets: list[str]) -> dict:
    assert main(["pretrain", recipe, "--out", str(out), "--set", *sets, *TINY]) == 0
    capsys.readouterr()
    assert main(["probe", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# ------------------------------------------------------------------------------ builders
def test_registered() -> None:
    assert DATASETS["table"] is build_table and DATASETS["arrays"] is build_arrays


def test_table_standardises_with_training_statistics_only(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "t.csv")
    raw = np.loadtxt(path, delimiter=",", skiprows=1)
    b = build_table(_cfg("table", path, "y", test_fraction=0.25))
    assert b.task == "regression" and b.num_classes == 0 and b.in_channels == 5
    xtr, ytr = b.train.x, b.train.y
    xte, yte = b.test.x, b.test.y
    assert len(xtr) == 225 and len(xte) == 75
    # train features are exactly standardised; test ones are not (other rows)
    assert torch.allclose(xtr.mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(xtr.std(0, unbiased=False), torch.ones(5), atol=1e-4)
    assert not torch.allclose(xte.mean(0), torch.zeros(5), atol=1e-3)
    # recover which raw rows went where, then check the test rows used the TRAIN mean / std
    tr_rows = np.array([np.argmin(np.abs(raw[:, 5] - t)) for t in ytr.numpy()])
    te_rows = np.array([np.argmin(np.abs(raw[:, 5] - t)) for t in yte.numpy()])
    assert len(set(tr_rows) | set(te_rows)) == 300  # a partition of the rows
    mean, std = raw[tr_rows, :5].mean(0), raw[tr_rows, :5].std(0)
    np.testing.assert_allclose(xte.numpy(), (raw[te_rows, :5] - mean) / std, rtol=1e-4,
                               atol=1e-4)
    full_std = (raw[te_rows, :5] - raw[:, :5].mean(0)) / raw[:, :5].std(0)
    assert not np.allclose(xte.numpy(), full_std, atol=1e-4)
    # the target keeps its units unless standardize_target
    np.testing.assert_allclose(ytr.numpy(), raw[tr_rows, 5], rtol=1e-5)
    bs = build_table(_cfg("table", path, "y", test_fraction=0.25, standardize_target=True))
    assert abs(float(bs.train.y.mean())) < 1e-4 and abs(float(bs.train.y.std(0, False)) - 1) < 1e-4
    # seeded split: same seed, same split; the augmentation is the tabular one
    again = build_table(_cfg("table", path, "y", test_fraction=0.25))
    assert torch.equal(again.test.y, yte)
    assert type(b.batch_augment).__name__ == "TabularAugment"
    assert b.batch_augment(xtr[:4]).shape == (4, 5)


def test_table_accepts_a_bom_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    _write_csv(tmp_path / "bom.csv", bom=True)
    _write_csv(tmp_path / "plain.csv")
    monkeypatch.chdir(tmp_path)
    a = build_table(_cfg("table", "bom.csv", "y"))
    b = build_table(_cfg("table", "plain.csv", "y"))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    # the BOM is not part of the first column's name: 'a' can be the target
    assert build_table(_cfg("table", "bom.csv", "a")).in_channels == 5


def test_arrays_builder(tmp_path: Path) -> None:
    b = build_arrays(_cfg("arrays", _write_npz(tmp_path / "s.npz"), test_fraction=0.1))
    assert b.task == "classification" and b.num_classes == 3 and b.in_channels == 1
    assert len(b.train) == 270 and len(b.test) == 30 and b.train.x.shape[1:] == (1, 40)
    assert b.train.x.dtype == torch.float32 and b.train.y.dtype == torch.long
    assert type(b.batch_augment).__name__ == "SignalAugment"
    u = build_arrays(_cfg("arrays", _write_npz(tmp_path / "u.npz", labels=False)))
    assert u.num_classes == 0 and bool((u.train.y == -1).all()) and u.extras


# ------------------------------------------------------------------------------ bad inputs
def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("text", "target", "expect"), [
    ("a,city,y\n1,2,3\n4,Paris,5\n", "y", ["column 'city'", "not numeric", "row 2", "Paris"]),
    ("a,b,y\n1,2,3\n4,,6\n7,8,9\n", "y", ["column 'b'", "missing value", "row 2"]),
    ("a,b,y\n1,2,3\n4,5,NA\n", "y", ["column 'y'", "missing value", "row 2"]),
    ("a,b,y\n1,2,3\n", "price", ["no column 'price'", "data.target", "a, b, y"]),
    ("", "y", ["is empty"]),
    ("a,b,y\n", "y", ["no data rows"]),
    ("a,b,y\n1,2,3\n4,5\n", "y", ["row 2", "2 fields", "header has 3", "column 'y' is missing"]),
    ("a,b,y\n1,2,3,9\n", "y", ["row 1", "4 fields", "extra field '9' after column 'y'"]),
    ("a;b;y\n1;2;3\n", "y", ["separated by commas"]),
    ("a,b,y\n1,inf,3\n1,2,3\n", "y", ["column 'b'", "non-finite", "row 1"]),
], ids=["non-numeric", "missing-feature", "missing-target-value", "no-target-column", "empty",
        "header-only", "short-row", "long-row", "semicolons", "inf"])
def test_bad_csv_gives_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                target: str, expect: list[str]) -> None:
    path = _csv(tmp_path / "bad.csv", text)
    line = _error(capsys, ["pretrain", "l1_table", "--out", str(tmp_path / "run"), "--set",
                           f"data.path={path}", f"data.target={target}", *TINY])
    assert str(path) in line
    for e in expect:
        assert e in line, line
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_missing_path_target_and_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = ["--out", str(tmp_path / "run")]
    line = _error(capsys, ["pretrain", "supremix_table", *out])
    assert "data.path is required for dataset 'table'" in line
    path = _write_csv(tmp_path / "t.csv")
    line = _error(capsys, ["pretrain", "rnc_table", *out, "--set", f"data.path={path}"])
    assert "data.target is required" in line and str(path) in line
    missing = tmp_path / "nope.csv"
    line = _error(capsys, ["pretrain", "rnc_table", *out, "--set", f"data.path={missing}",
                           "data.target=y"])
    assert str(missing) in line and "does not exist" in line
    line = _error(capsys, ["pretrain", "moco_arrays", *out, "--set",
                           f"data.path={tmp_path / 'nope.npz'}"])
    assert "nope.npz" in line and "does not exist" in line
    line = _error(capsys, ["pretrain", "moco_arrays", *out])
    assert "data.path is required for dataset 'arrays'" in line


def _bad_npz(tmp_path: Path, name: str) -> tuple[Path, list[str]]:
    p = tmp_path / f"{name}.npz"
    x = np.zeros((20, 1, 8), np.float32)
    if name == "no_x":
        np.savez(p, signals=x)
        return p, ["no array 'x'", "signals"]
    if name == "ndim":
        np.savez(p, x=np.zeros((20, 8), np.float32))
        return p, ["array 'x'", "3-D", "(20, 8)"]
    if name == "nan":
        x[3, 0, 2] = np.nan
        np.savez(p, x=x)
        return p, ["array 'x'", "NaN", "sample 3"]
    if name == "dtype":
        np.savez(p, x=np.full((20, 1, 8), "a"))
        return p, ["array 'x'", "real numbers"]
    if name == "y_float":
        np.savez(p, x=x, y=np.zeros(20))
        return p, ["array 'y'", "integer", "float64"]
    if name == "y_len":
        np.savez(p, x=x, y=np.zeros(19, np.int64))
        return p, ["array 'y'", "N = 20", "(19,)"]
    if name == "pickle":
        np.savez(p, x=np.array([{"a": 1}] * 3, dtype=object))
        return p, ["without pickles"]
    assert name == "not_npz"
    p.write_bytes(b"not a zip file at all")
    return p, ["not a readable .npz"]


@pytest.mark.parametrize("name", ["no_x", "ndim", "nan", "dtype", "y_float", "y_len", "pickle",
                                  "not_npz"])
def test_bad_npz_gives_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                name: str) -> None:
    path, expect = _bad_npz(tmp_path, name)
    line = _error(capsys, ["pretrain", "moco_arrays", "--out", str(tmp_path / "run"), "--set",
                           f"data.path={path}", *TINY])
    assert str(path) in line
    for e in expect:
        assert e in line, line


def test_builders_raise_dataset_error_for_too_few_rows(tmp_path: Path) -> None:
    path = _csv(tmp_path / "two.csv", "a,y\n1,2\n3,4\n")
    with pytest.raises(DatasetError, match="too few"):
        build_table(_cfg("table", path, "y"))


# ------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("recipe", ["supremix_table", "rnc_table", "l1_table"])
def test_table_recipes_pretrain_and_probe(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          recipe: str) -> None:
    path = _write_csv(tmp_path / "t.csv")
    res = _pretrain_probe(capsys, recipe, tmp_path / "run",
                          [f"data.path={path}", "data.target=y"])
    assert res["task"] == "regression" and res["dataset"] == "table"
    assert res["n_test"] == 60 and res["n_train"] == 240
    for k in ("mae", "mse", "gmean", "spearman"):
        assert isinstance(res[k], float) and math.isfinite(res[k]), k


def test_arrays_pretrain_probe_and_unlabelled(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_npz(tmp_path / "s.npz")
    res = _pretrain_probe(capsys, "moco_arrays", tmp_path / "run",
                          [f"data.path={path}", "method.queue_size=64"])
    assert res["task"] == "classification" and res["n_test"] == 60
    assert math.isfinite(res["accuracy"]) and 0.0 <= res["accuracy"] <= 1.0
    # the 1-D recipes take the data too
    res = _pretrain_probe(capsys, "moco_mnist1d", tmp_path / "run2",
                          ["data.name=arrays", f"data.path={path}", "method.queue_size=64"])
    assert math.isfinite(res["accuracy"])
    # without labels: pretraining works, the probe says in one line why it cannot evaluate
    u = _write_npz(tmp_path / "u.npz", labels=False)
    assert main(["pretrain", "moco_arrays", "--out", str(tmp_path / "run3"), "--set",
                 f"data.path={u}", "method.queue_size=64", *TINY]) == 0
    line = _error(capsys, ["probe", str(tmp_path / "run3")])
    assert str(u) in line and "no array 'y'" in line and "evaluation needs them" in line


def test_a_relative_data_path_is_stored_absolute(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pretrain from the data's folder with a relative path; probe from anywhere else."""
    data_dir, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    data_dir.mkdir()
    elsewhere.mkdir()
    _write_csv(data_dir / "t.csv")
    run = tmp_path / "run"
    monkeypatch.chdir(data_dir)
    assert main(["pretrain", "l1_table", "--out", str(run), "--set", "data.path=t.csv",
                 "data.target=y", *TINY]) == 0
    assert Path(read_run_config(run).data.path) == data_dir / "t.csv"
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["probe", str(run), "--json"]) == 0
    assert "mae" in json.loads(capsys.readouterr().out)
