"""Recipes: find a bundled or user YAML file, validate it with its method's config.

:func:`load_recipe` validates the shared sections against :mod:`contrastmix.config` and the
``method`` section against the config dataclass of the method it names, looked up in the
registry (:data:`contrastmix.methods.METHODS`, which holds the training modules); the
method's own checks run then. Evaluation reads a finished run's recipe with
:func:`contrastmix.rundir.read_run_config` instead, which needs no training code.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from contrastmix import config
from contrastmix.errors import RecipeError
from contrastmix.methods import get_method

__all__ = ["load_recipe", "apply_overrides", "find_recipe", "bundled_recipes", "RECIPES_DIR"]


def _recipes_dir() -> Path:
    """The bundled recipes: the package ``contrastmix.recipes`` (``recipes/`` in the repository,
    installed as package data by a wheel or an editable install)."""
    spec = importlib.util.find_spec("contrastmix.recipes")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(__file__).resolve().parent.parent / "recipes"  # a source tree, not installed


#: Folder of the bundled recipes.
RECIPES_DIR = _recipes_dir()


def bundled_recipes() -> list[str]:
    """Names of the bundled recipes (``contrastmix pretrain NAME``)."""
    return sorted(q.stem for q in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []


def find_recipe(recipe: str | Path) -> Path:
    """Resolve a recipe path or the bare name of a bundled recipe (``moco_mnist1d``)."""
    p = Path(recipe).expanduser()
    for c in (p, RECIPES_DIR / p, RECIPES_DIR / f"{p}.yaml"):
        if c.is_file():
            return c
    known = bundled_recipes()
    hint = f"; bundled recipes: {', '.join(known)}" if known else ""
    raise RecipeError(f"recipe not found: {recipe}{hint}")


def _method_schema(name: str) -> type:
    return get_method(name).Config


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None = None) -> DictConfig:
    """Validate a raw recipe mapping plus ``key=value`` overrides, its method section included
    (:func:`contrastmix.config.apply_overrides` with the method registry)."""
    return config.apply_overrides(raw, overrides, method_schema=_method_schema)


def load_recipe(recipe: str | Path, overrides: list[str] | None = None) -> DictConfig:
    """Load, validate and override a recipe.

    Args:
        recipe: A path, or the name of a recipe in ``recipes/``.
        overrides: ``["trainer.max_epochs=5", ...]``; values are YAML scalars.

    Returns:
        The validated config (struct mode: unknown keys raise).

    Raises:
        RecipeError: missing file, file over 1 MiB, malformed YAML, YAML aliases, unknown
            key or method, wrong, out-of-range or non-finite value (the method's own checks
            included), a ``${...}`` interpolation, or a ``name`` that is not one safe path
            component.
    """
    path = find_recipe(recipe)
    try:
        raw = config.load_yaml_file(path, f"recipe {path}")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        detail = f"{getattr(e, 'problem', None) or str(e).splitlines()[0]}{where}"  # one line
        raise RecipeError(f"recipe {path} is not valid YAML: {detail}") from None
    return apply_overrides(raw or {}, overrides)
