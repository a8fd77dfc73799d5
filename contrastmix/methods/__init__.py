"""The methods: one file each, and the registry a recipe's ``method.name`` is looked up in.

Each file holds a method's config (defaults and checks) and its training module, a subclass of
:class:`~contrastmix.methods.base.Method`. :data:`METHODS` lists the built-in ones;
:func:`register_method` adds a method from user code (``contrastmix pretrain RECIPE --import
MODULE`` imports such a module before the recipe is read).

This package holds Lightning modules: the core (:mod:`contrastmix.losses`,
:mod:`contrastmix.mixing`, :mod:`contrastmix.banks`, :mod:`contrastmix.models`,
:mod:`contrastmix.data`) and evaluation never import it.
"""

from __future__ import annotations

from contrastmix.errors import RecipeError
from contrastmix.methods.base import Method, MethodConfig
from contrastmix.methods.clip import CLIP
from contrastmix.methods.concat import Concat
from contrastmix.methods.erm import ERM
from contrastmix.methods.l1 import L1Regression
from contrastmix.methods.m2mix import M2Mix
from contrastmix.methods.m3col import M3CoL
from contrastmix.methods.mixup import Mixup
from contrastmix.methods.mochi import MoCHi
from contrastmix.methods.moco import MoCo
from contrastmix.methods.rnc import RnC
from contrastmix.methods.supcon import SupCon
from contrastmix.methods.supremix import SupReMix

__all__ = ["METHODS", "Method", "MethodConfig", "register_method", "get_method"]

#: The built-in methods by recipe name.
METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (MoCo, MoCHi, SupReMix, RnC, SupCon, L1Regression, ERM, Mixup, CLIP, M2Mix,
              Concat, M3CoL)
}


def register_method(method: type[Method], *, replace: bool = False) -> type[Method]:
    """Make ``method`` available to recipes as ``method.name: <method.name>``.

    Usable as a class decorator. ``method`` must subclass :class:`Method` and set ``name`` and
    ``Config`` (a dataclass subclassing :class:`MethodConfig` whose ``name`` defaults to the same
    string).

    Raises:
        ValueError: not a :class:`Method`, a missing or mismatched name, or a name already taken
            (pass ``replace=True`` to override it deliberately).
    """
    if not (isinstance(method, type) and issubclass(method, Method)):
        raise ValueError(f"register_method needs a Method subclass, got {method!r}")
    name = method.name
    if not name or not isinstance(name, str):
        raise ValueError(f"{method.__name__}.name must be a non-empty string")
    if not issubclass(method.Config, MethodConfig):
        raise ValueError(f"{method.__name__}.Config must subclass MethodConfig")
    if method.Config().name != name:
        raise ValueError(
            f"{method.__name__}.Config's default name is {method.Config().name!r}, "
            f"expected {name!r}"
        )
    if name in METHODS and METHODS[name] is not method and not replace:
        raise ValueError(f"method name {name!r} is taken by {METHODS[name].__name__}")
    METHODS[name] = method
    return method


def get_method(name: object) -> type[Method]:
    """The method registered under ``name``.

    Raises:
        RecipeError: an unknown name (the message lists the known ones).
    """
    if not isinstance(name, str) or name not in METHODS:
        raise RecipeError(
            f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))} "
            "(a method of your own: contrastmix pretrain RECIPE --import MODULE)"
        )
    return METHODS[name]
