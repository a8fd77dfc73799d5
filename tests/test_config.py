"""Recipe schema: typed keys, overrides, clear errors, safe YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from contrastmix.config import RECIPES_DIR, load_recipe
from contrastmix.errors import RecipeError


def test_bundled_recipes_validate() -> None:
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    assert "moco_mnist1d" in names
    for name in names:
        cfg = load_recipe(name)
        assert cfg.method.name


def test_overrides_are_typed() -> None:
    cfg = load_recipe("moco_mnist1d", ["trainer.max_epochs=3", "method.temperature=0.5"])
    assert cfg.trainer.max_epochs == 3 and isinstance(cfg.trainer.max_epochs, int)
    assert cfg.method.temperature == 0.5


def test_method_switch_by_override_gets_its_schema() -> None:
    cfg = load_recipe("moco_mnist1d", ["method.name=mochi", "method.num_hard=64"])
    assert cfg.method.num_hard == 64 and cfg.method.warmup_epochs == 10


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["trainer.max_epochz=1"], "unknown recipe key 'trainer.max_epochz'"),
        (["method.num_hard=4"], "unknown recipe key 'method.num_hard'"),
        (["trainer.max_epochs=abc"], "invalid value for recipe key 'trainer.max_epochs'"),
        (["method.name=simclr"], "unknown method 'simclr'"),
        (["trainer"], "key=value"),
    ],
)
def test_bad_overrides_name_the_problem(overrides: list[str], needle: str) -> None:
    with pytest.raises(RecipeError, match=needle.replace("(", r"\(")):
        load_recipe("moco_mnist1d", overrides)


def test_unknown_key_suggests_the_close_one() -> None:
    with pytest.raises(RecipeError, match="did you mean 'trainer.max_epochs'"):
        load_recipe("moco_mnist1d", ["trainer.max_epochz=1"])


def test_missing_recipe(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo pwned']\nmethod: {name: moco}\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(p)


def test_override_values_are_not_evaluated() -> None:
    cfg = load_recipe("moco_mnist1d", ["name=__import__('os').getcwd()"])
    assert cfg.name == "__import__('os').getcwd()"
