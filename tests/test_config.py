"""Recipe schema: typed keys, overrides, clear errors, safe YAML."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from contrastmix.errors import RecipeError
from contrastmix.recipe import RECIPES_DIR, load_recipe


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


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optim.momentum=2", "'optim.momentum': 2.0 (must be in [0, 1))"),
        ("optim.lr=0", "'optim.lr': 0.0 (must be > 0)"),
        ("optim.name=lamb", "'optim.name': 'lamb' (must be one of 'sgd', 'adamw', 'lars')"),
        ("trainer.max_epochs=0", "'trainer.max_epochs': 0 (must be >= 1)"),
        ("data.batch_size=0", "'data.batch_size': 0 (must be >= 1)"),
        ("model.width=0", "'model.width': 0 (must be >= 1)"),
        ("eval.knn_k=0", "'eval.knn_k': 0 (must be >= 1)"),
        ("eval.probe_val_fraction=1", "'eval.probe_val_fraction': 1.0 (must be in (0, 1))"),
        ("trainer.gradient_clip_val=-1", "'trainer.gradient_clip_val': -1.0"),
    ],
)
def test_out_of_range_values_name_key_and_range(override: str, needle: str) -> None:
    # values that torch / Lightning would accept (SGD momentum 2 diverges) or reject only
    # once training runs (kNN at the end of the first epoch)
    with pytest.raises(RecipeError, match="invalid value for recipe key " + re.escape(needle)):
        load_recipe("moco_mnist1d", [override])


def test_edge_values_in_range_are_accepted() -> None:
    cfg = load_recipe("moco_mnist1d", [
        "optim.momentum=0", "optim.weight_decay=0", "trainer.gradient_clip_val=null",
        "eval.knn_every_n_epochs=0", "data.num_workers=0", "trainer.max_epochs=1",
    ])
    assert cfg.optim.momentum == 0 and cfg.trainer.gradient_clip_val is None


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
    cfg = load_recipe("moco_mnist1d", ["data.root=__import__('os').getcwd()"])
    assert cfg.data.root == "__import__('os').getcwd()"


@pytest.mark.parametrize(
    ("recipe", "override", "needle"),
    [
        ("mochi_mnist1d", "method.warmup_epochs=-1", "`method.warmup_epochs` must be >= 0"),
        ("mochi_mnist1d", "method.num_hard=0", "`method.num_hard` must be >= 1"),
        ("moco_mnist1d", "method.queue_size=0", "`method.queue_size` must be >= 1"),
        ("moco_mnist1d", "method.temperature=0", "`method.temperature` must be > 0"),
        ("moco_mnist1d", "method.bank_backend=faiss", "`method.bank_backend` must be one of"),
    ],
)
def test_method_values_rejected_when_the_recipe_loads(
    recipe: str, override: str, needle: str
) -> None:
    # each method's config checks its own values (next to the method), in one line
    with pytest.raises(RecipeError, match=re.escape(needle)):
        load_recipe(recipe, [override])


@pytest.mark.parametrize(
    ("recipe", "override", "needle"),
    [
        ("moco_mnist1d", "trainer.devices=0", "trainer settings rejected"),
        # Lightning raises a TypeError for this one
        ("moco_mnist1d", "trainer.devices=[0,1]", "`devices` selected with `CPUAccelerator`"),
    ],
)
def test_values_rejected_when_pretrain_builds(
    tmp_path: Path, recipe: str, override: str, needle: str
) -> None:
    # what the config rules cannot know is checked by the modules and Lightning when built:
    # a RecipeError before any training, and no run directory
    from contrastmix.train.pretrain import pretrain

    cfg = load_recipe(recipe, [override, "trainer.enable_progress_bar=false",
                               "trainer.accelerator=cpu"])
    with pytest.raises(RecipeError, match=re.escape(needle)):
        pretrain(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_print_config_is_a_recipe_and_trains_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from contrastmix.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "mochi_mnist1d", "--set", "method.num_hard=512",
                 "optim.lr=0.1", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert not (tmp_path / "runs").exists()
    (tmp_path / "resolved.yaml").write_text(printed)
    again = load_recipe(tmp_path / "resolved.yaml")
    assert again == load_recipe("mochi_mnist1d", ["method.num_hard=512", "optim.lr=0.1"])
    assert again.method.num_hard == 512 and again.optim.lr == 0.1
    # bad values are still refused, in one line
    assert main(["pretrain", "mochi_mnist1d", "--set", "optim.lr=-1", "--print-config"]) == 2
    assert "invalid value for recipe key 'optim.lr'" in capsys.readouterr().err
