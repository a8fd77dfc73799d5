"""Values that would hang or poison a run, and recipes as an attack surface (issue 17, 4-5).

Non-finite floats anywhere in a recipe, YAML aliases, oversized files, ``${...}``
interpolations and run names that leave ``runs/`` are refused when the recipe loads, in one
line naming the key; a run that would train zero steps is refused before anything is written.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.nodes import FloatNode

from contrastmix.config import MAX_YAML_BYTES, RecipeConfig
from contrastmix.errors import RecipeError
from contrastmix.mixing.beta import sample_beta
from contrastmix.recipe import bundled_recipes, load_recipe

NON_FINITE = (".inf", "-.inf", ".nan")
SECTIONS = ("data", "model", "optim", "trainer", "eval")


def _float_keys(node: DictConfig, prefix: str) -> dict[str, Any]:
    """``key -> current value`` of every float (or list-of-float) leaf under ``node``."""
    out: dict[str, Any] = {}
    for k in node.keys():
        child = node._get_node(k)
        key = f"{prefix}.{k}"
        if isinstance(child, FloatNode):
            out[key] = child._value()
        elif isinstance(child, ListConfig) and child._metadata.element_type is float:
            out[key] = list(child)
        elif isinstance(child, DictConfig) and not child._is_none():
            out.update(_float_keys(child, key))
    return out


def _override(key: str, current: Any, bad: str) -> str:
    if isinstance(current, list):  # the first element non-finite, the rest as they were
        rest = [str(v) for v in current[1:]]
        return f"{key}=[{', '.join([bad, *rest])}]"
    return f"{key}={bad}"


def _refuses(recipe: str, key: str, current: Any, infinite_ok: bool = False) -> None:
    for bad in NON_FINITE:
        if infinite_ok and bad == ".inf":  # a documented "no limit" (SupReMix's window)
            assert load_recipe(recipe, [_override(key, current, bad)]) is not None
            continue
        with pytest.raises(RecipeError) as info:
            load_recipe(recipe, [_override(key, current, bad)])
        msg = str(info.value)
        assert "\n" not in msg
        assert re.search(rf"recipe key '{re.escape(key)}(\[0\])?': .*must be finite", msg), msg


def test_every_shared_float_key_rejects_non_finite_values() -> None:
    schema = OmegaConf.structured(RecipeConfig)
    keys: dict[str, Any] = {}
    for section in SECTIONS:
        keys.update(_float_keys(schema[section], section))
    # the schema's float keys, found by type (a new one is covered without editing this test)
    assert {"optim.lr", "eval.knn_temperature", "trainer.limit_train_batches",
            "data.signal_aug.crop_scale", "data.image_aug.rotation"} <= set(keys)
    for key, current in keys.items():
        _refuses("moco_mnist1d", key, current)


def _one_recipe_per_method() -> list[str]:
    """The first bundled recipe of each method: a method section's float keys are its config
    dataclass's fields, the same in every recipe of that method (and each recipe is loaded by
    tests/test_config.py), so one recipe per method covers them all."""
    import yaml

    from contrastmix.recipe import RECIPES_DIR

    first: dict[str, str] = {}
    for name in bundled_recipes():
        raw = yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text()) or {}
        first.setdefault(str((raw.get("method") or {}).get("name")), name)
    return sorted(first.values())


@pytest.mark.parametrize("recipe", _one_recipe_per_method())
def test_every_method_float_key_rejects_non_finite_values(recipe: str) -> None:
    method = load_recipe(recipe).method
    inf_ok = {f"method.{k}" for k in OmegaConf.get_type(method).infinite_ok}
    keys = _float_keys(method, "method")
    assert keys  # every bundled method has float settings
    for key, current in keys.items():
        _refuses(recipe, key, current, infinite_ok=key in inf_ok)


def test_infinite_window_is_a_setting_and_reads_back(tmp_path: Path) -> None:
    from contrastmix.rundir import read_run_config

    cfg = load_recipe("supremix_diabetes", ["method.window=.inf"])
    assert cfg.method.window == math.inf
    with pytest.raises(RecipeError, match="'method.window': nan"):
        load_recipe("supremix_diabetes", ["method.window=.nan"])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    assert read_run_config(tmp_path).method.window == math.inf


def test_non_finite_from_a_yaml_file(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("method: {name: moco, temperature: .inf}\noptim: {lr: 0.1}\n")
    with pytest.raises(RecipeError, match=re.escape("'method.temperature': inf (must be finite)")):
        load_recipe(p)
    p.write_text("method: {name: moco}\noptim: {lr: .nan}\n")
    with pytest.raises(RecipeError, match=re.escape("'optim.lr': nan (must be finite)")):
        load_recipe(p)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0.0, -1.0])
def test_beta_sampler_refuses_bad_concentrations_quickly(bad: float) -> None:
    with pytest.raises(ValueError, match="`alpha` must be"):
        sample_beta(4, bad)
    with pytest.raises(ValueError, match="`beta` must be"):
        sample_beta(4, 1.0, bad)
    if not math.isfinite(bad):
        with pytest.raises(ValueError, match="`alpha` must be finite"):
            sample_beta(4, bad)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("data.batch_size=100000", "data.batch_size=100000 is larger than the dataset"),
        ("trainer.limit_train_batches=0.0001", "trainer.limit_train_batches=0.0001"),
    ],
)
def test_zero_step_runs_are_refused_before_anything_is_written(
    tmp_path: Path, override: str, needle: str
) -> None:
    from contrastmix.train.pretrain import pretrain

    cfg = load_recipe("moco_mnist1d", [override, "trainer.accelerator=cpu",
                                       "trainer.enable_progress_bar=false"])
    with pytest.raises(RecipeError, match=re.escape(needle)) as info:
        pretrain(cfg, tmp_path / "run")
    assert "zero steps" in str(info.value)
    if "batch_size" in override:
        assert "(4000 samples)" in str(info.value) and "data.drop_last=false" in str(info.value)
    assert not (tmp_path / "run").exists()


def _bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join([*lines, "method: {name: moco}", ""])


def test_alias_bomb_is_refused_fast(tmp_path: Path) -> None:
    p = tmp_path / "bomb.yaml"
    p.write_text(_bomb())
    assert p.stat().st_size < 1000
    start = time.perf_counter()
    with pytest.raises(RecipeError, match=r"uses YAML aliases \(\*a0\), which are not allowed"):
        load_recipe(p)
    assert time.perf_counter() - start < 1.0


def test_any_alias_is_refused_even_a_harmless_one(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("method: {name: moco}\noptim: &o {lr: 0.1}\neval: {knn_k: 5}\nx: *o\n")
    with pytest.raises(RecipeError, match="YAML aliases"):
        load_recipe(p)
    with pytest.raises(RecipeError, match="override .* uses YAML aliases"):
        load_recipe("moco_mnist1d", ["data.pool_seeds=[&s 1, *s]"])


def test_huge_recipe_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "huge.yaml"
    p.write_text("method: {name: moco}\n#" + "x" * MAX_YAML_BYTES + "\n")
    with pytest.raises(RecipeError, match="is too large"):
        load_recipe(p)


def test_deep_nesting_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "deep.yaml"
    p.write_text("[" * 200_000)
    with pytest.raises(RecipeError, match="nested too deeply"):
        load_recipe(p)


def test_interpolations_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "env.yaml"
    p.write_text("method: {name: moco}\ndata: {root: '${oc.env:HOME}'}\n")
    with pytest.raises(RecipeError, match=r"recipe key 'data.root' uses an interpolation"):
        load_recipe(p)
    p.write_text("method: {name: moco, temperature: '${optim.lr}'}\n")
    with pytest.raises(RecipeError, match=r"'method.temperature' uses an interpolation"):
        load_recipe(p)
    with pytest.raises(RecipeError, match=r"'data.root' uses an interpolation"):
        load_recipe("moco_mnist1d", ["data.root=${oc.env:HOME}"])
    with pytest.raises(RecipeError, match=r"'name' uses an interpolation"):
        load_recipe("moco_mnist1d", ["name=run-${oc.env:USER}"])


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".", "/tmp/x", "a b", ""])
def test_unsafe_run_names_are_refused(name: str) -> None:
    with pytest.raises(RecipeError, match=r"invalid value for recipe key 'name'"):
        load_recipe("moco_mnist1d", [f"name={name}"])


def test_safe_run_name_is_accepted() -> None:
    assert load_recipe("moco_mnist1d", ["name=my-run_1.0"]).name == "my-run_1.0"


def test_run_config_yaml_is_read_back_without_aliases(tmp_path: Path) -> None:
    from contrastmix.errors import RunDirError
    from contrastmix.rundir import read_run_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(_bomb())
    with pytest.raises(RunDirError, match="uses YAML aliases"):
        read_run_config(run)


@pytest.mark.parametrize(
    ("files", "args", "needle"),
    [
        ({}, ["moco_mnist1d", "--set", "optim.lr=inf"], "'optim.lr': inf (must be finite)"),
        ({}, ["moco_mnist1d", "--set", "method.temperature=.nan"], "'method.temperature': nan"),
        ({"bomb.yaml": _bomb()}, ["bomb.yaml"], "uses YAML aliases"),
        ({}, ["moco_mnist1d", "--set", "data.root=${oc.env:HOME}"], "uses an interpolation"),
        ({}, ["moco_mnist1d", "--set", "name=../../x"], "recipe key 'name'"),
        ({}, ["moco_mnist1d", "--set", "data.batch_size=100000", "trainer.accelerator=cpu",
              "trainer.enable_progress_bar=false", "--out", "run"], "zero steps"),
    ],
)
def test_cli_prints_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    files: dict[str, str], args: list[str], needle: str,
) -> None:
    from contrastmix.cli import main

    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert main(["pretrain", *args]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("contrastmix: error: "), err
    assert needle in lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()
