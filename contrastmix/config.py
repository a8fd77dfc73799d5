"""Typed recipe schema (OmegaConf structured configs) and its validation.

A recipe is validated against :class:`RecipeConfig`; the ``method`` section against the config
dataclass of its method when the caller passes the lookup (:mod:`contrastmix.recipe` does, with
the method registry; this module never imports the methods). Unknown
keys, wrong types, out-of-range values of the shared sections (``trainer``, ``optim``,
``data``, ``model``, ``eval``) and missing files raise :class:`~contrastmix.errors.RecipeError`
with one line naming the problem. YAML is read with a ``yaml.SafeLoader`` that also refuses
aliases (:func:`load_yaml_file`; files of at most 1 MiB) and overrides ``a.b=c`` are parsed as
YAML scalars with the same loader — nothing from a config is ever evaluated as code. Every
float must be finite, ``${...}`` interpolations (which could read environment variables) are
refused, and ``name`` must be one safe path component (it names ``runs/<name>``).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from contrastmix.errors import ContrastmixError, RecipeError

__all__ = [
    "RecipeConfig",
    "TrainerConfig",
    "OptimConfig",
    "DataConfig",
    "ModelConfig",
    "EvalConfig",
    "apply_overrides",
    "check_logger_packages",
    "OPTIMIZERS",
    "SCHEDULERS",
    "LOGGERS",
    "MAX_YAML_BYTES",
    "load_yaml_file",
]

#: Largest recipe / ``config.yaml`` read (bytes).
MAX_YAML_BYTES = 1 << 20


class _AliasFound(Exception):
    def __init__(self, anchor: str) -> None:
        super().__init__(anchor)
        self.anchor = anchor


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses every alias (``*name``): a few hundred bytes of nested
    aliases expand to gigabytes once OmegaConf copies them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _AliasFound(str(self.peek_event().anchor))
        return super().compose_node(parent, index)


def _load_yaml(text: str, what: str, error: type[ContrastmixError] = RecipeError) -> Any:
    """Parse YAML with :class:`_NoAliasLoader`; ``yaml.YAMLError`` is left to the caller."""
    loader = _NoAliasLoader(text)
    try:
        return loader.get_single_data()
    except _AliasFound as e:
        raise error(
            f"{what} uses YAML aliases (*{e.anchor}), which are not allowed"
        ) from None
    except RecursionError:
        raise error(f"{what} is nested too deeply") from None
    finally:
        loader.dispose()


def load_yaml_file(path: Path, what: str, error: type[ContrastmixError] = RecipeError) -> Any:
    """Read a YAML file of at most :data:`MAX_YAML_BYTES`, refusing aliases and Python tags.

    Args:
        path: The file.
        what: How messages name it (``"recipe a.yaml"``).
        error: The error class raised.

    Raises:
        error: a file that is too large, not UTF-8 text, aliased or nested too deeply.
        yaml.YAMLError: malformed YAML (the caller words it).
    """
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise error(f"{what} is too large ({size} bytes; at most {MAX_YAML_BYTES} bytes)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} is not UTF-8 text") from None
    return _load_yaml(text, what, error)



@dataclass
class TrainerConfig:
    """Lightning ``Trainer`` settings."""

    max_epochs: int = 100
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    log_every_n_steps: int = 10
    deterministic: bool = False
    # true | false | auto: a progress bar when the output is a terminal (sys.stdout is a TTY)
    enable_progress_bar: Any = "auto"
    # experiment loggers: csv (always; the run's metrics.csv comes from it), tensorboard,
    # wandb, mlflow (the last three need their package installed)
    loggers: list[str] = field(default_factory=lambda: ["csv"])
    limit_train_batches: float = 1.0
    gradient_clip_val: float | None = None
    num_threads: int = 0  # torch.set_num_threads for CPU runs; 0 leaves torch's default
    checkpoint_every_n_epochs: int = 1
    # Lightning's SyncBatchNorm conversion: BatchNorm statistics over the global batch under
    # DDP (otherwise each rank normalises with, and keeps, its own statistics)
    sync_batchnorm: bool = False


OPTIMIZERS = ("sgd", "adamw", "lars")
SCHEDULERS = ("cosine", "constant")
#: ``trainer.loggers`` names and the package each needs (``None``: always available).
LOGGERS: dict[str, tuple[str, ...] | None] = {
    "csv": None, "tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",),
    "mlflow": ("mlflow",),
}


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (linear warm-up, then cosine)."""

    name: str = "sgd"  # sgd | adamw | lars (lightly's LARS, for large batches)
    lr: float = 0.06
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 0
    scheduler: str = "cosine"  # cosine | constant
    trust_coefficient: float = 0.001  # LARS only: the layer-wise rate's trust coefficient


@dataclass
class SignalAugConfig:
    """:class:`contrastmix.data.augment1d.SignalAugment` parameters (1-D signals)."""

    crop_scale: list[float] = field(default_factory=lambda: [0.6, 1.0])
    max_shift: float = 1.0
    amplitude: list[float] = field(default_factory=lambda: [0.8, 1.2])
    shear: float = 0.5
    noise_std: float = 0.05
    flip_prob: float = 0.0


@dataclass
class ImageAugConfig:
    """:class:`contrastmix.data.augment2d.ImageBatchAugment` parameters (in-memory images)."""

    scale: list[float] = field(default_factory=lambda: [0.9, 1.3])
    rotation: float = 15.0
    translate: float = 0.15
    shear: float = 10.0
    brightness: float = 0.2
    contrast: list[float] = field(default_factory=lambda: [0.7, 1.3])
    noise_std: float = 0.05


@dataclass
class DataConfig:
    """Dataset, loader and augmentation settings."""

    name: str = "mnist1d"  # see `contrastmix list` (datasets)
    root: str | None = None
    path: str | None = None  # the user's file: table (CSV) / arrays (.npz) / image-text-csv
    target: str | None = None  # table: name of the target column
    download: bool = False
    seed: int = 42  # generator seed (mnist1d) / split seed (digits)
    pool_seeds: list[int] = field(default_factory=list)  # extra unlabelled mnist1d pool
    batch_size: int = 256
    eval_batch_size: int = 1024
    num_workers: int = 0
    image_size: int = 32
    drop_last: bool = True
    options: dict[str, Any] = field(default_factory=dict)  # dataset-specific options
    signal_aug: SignalAugConfig = field(default_factory=SignalAugConfig)
    image_aug: ImageAugConfig = field(default_factory=ImageAugConfig)


@dataclass
class ModelConfig:
    """Backbone and projector head."""

    backbone: str = "cnn1d"  # cnn1d | cnn2d | resnet18 | resnet50 | timm:NAME | torchvision:NAME
    width: int = 32
    cifar_stem: bool = False
    weights: str | None = None  # state_dict file the backbone starts from (weights only, strict)
    proj_hidden_dim: int = 512
    proj_output_dim: int = 128
    proj_batch_norm: bool = False


@dataclass
class EvalConfig:
    """Online monitoring and probe protocol."""

    knn_k: int = 200
    knn_temperature: float = 0.1
    knn_every_n_epochs: int = 1
    probe_val_fraction: float = 0.2
    probe_max_iter: int = 1000


@dataclass
class RecipeConfig:
    """A whole recipe: what to train (``method``), on what, how, and how to evaluate."""

    name: str = "run"
    seed: int = 0
    method: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys: list[str] = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys += _all_keys(node._get_node(k), full + ".")
    return keys


def _key_error(cfg: DictConfig, e: OmegaConfBaseException) -> RecipeError:
    key = getattr(e, "full_key", None) or str(e).splitlines()[0]
    close = difflib.get_close_matches(str(key), _all_keys(cfg), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return RecipeError(f"unknown recipe key '{key}'{hint}")


def _base_for(method_name: Any, method_schema: Callable[[str], type] | None) -> DictConfig:
    if method_name is None:
        raise RecipeError("recipe has no `method.name` (e.g. method: {name: moco})")
    base = OmegaConf.structured(RecipeConfig)
    if method_schema is not None:
        base.method = OmegaConf.structured(method_schema(method_name))
    else:  # a run's own config.yaml: the method section as written (see rundir.py)
        base.method = OmegaConf.create({"name": method_name})
    return base


def _check_method(cfg: DictConfig) -> None:
    """Run the method config's own checks (its dataclass ``__post_init__``)."""
    try:
        OmegaConf.to_object(cfg.method)
    except ValueError as e:
        raise RecipeError(f"invalid method setting: {str(e).splitlines()[0]}") from None
    except OmegaConfBaseException as e:  # a ValueError raised inside __post_init__
        cause = e.__cause__ if isinstance(e.__cause__, ValueError) else e
        raise RecipeError(f"invalid method setting: {str(cause).splitlines()[0]}") from None


def _merge(base: DictConfig, other: Any) -> DictConfig:
    try:
        merged = OmegaConf.merge(base, other)
    except ConfigKeyError as e:
        raise _key_error(base, e) from None
    except ValidationError as e:
        key = getattr(e, "full_key", "?")
        section = _replaced_section(base, other)
        if not key and section:  # `--set trainer=3`: OmegaConf names no key
            raise RecipeError(f"recipe key '{section}' is a section, not a value; set its keys "
                              f"one by one (e.g. --set {section}.KEY=VALUE)") from None
        msg = str(e).splitlines()[0]
        raise RecipeError(f"invalid value for recipe key '{key}': {msg}") from None
    assert isinstance(merged, DictConfig)
    return merged


def _replaced_section(base: Any, other: Any, prefix: str = "") -> str | None:
    """The first key where ``other`` gives a plain value for a section (mapping) of ``base``."""
    if not isinstance(other, dict) or not isinstance(base, DictConfig):
        return None
    for k, v in other.items():
        if k not in base:
            continue
        child = base._get_node(k)
        key = f"{prefix}.{k}".lstrip(".")
        if isinstance(child, DictConfig):
            if not isinstance(v, dict) and v is not None:
                return key
            found = _replaced_section(child, v, key)
            if found:
                return found
    return None


def _parse_overrides(overrides: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override must look like key=value, got '{item}'")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise RecipeError(f"override has an empty key: '{item}'")
        try:
            value = _load_yaml(raw, f"override '{item}'") if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out[key] = value
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for key, value in flat.items():
        node = root
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise RecipeError(f"override '{key}' conflicts with another override")
        node[parts[-1]] = value
    return root


def _at_least(lo: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= lo), f">= {lo}"


def _positive() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v > 0), "> 0"


#: Largest seed: numpy's and Lightning's ``seed_everything`` accept ``[0, 2**32 - 1]``.
MAX_SEED = 2**32 - 1


def _seed() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: 0 <= v <= MAX_SEED), f"in [0, {MAX_SEED}]"


def _one_of(choices: tuple[str, ...]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), "one of " + ", ".join(repr(c) for c in choices)


_NAME = re.compile(r"[A-Za-z0-9._-]+")


def _safe_name() -> tuple[Callable[[Any], bool], str]:
    """A run name is the folder ``runs/<name>``: one path component, never ``.`` / ``..``."""
    ok = lambda v: isinstance(v, str) and v not in (".", "..") and bool(_NAME.fullmatch(v))  # noqa: E731
    return ok, "one path component of letters, digits, '.', '_', '-'"


# Values of the shared sections that nothing checks before training would start (or that
# torch accepts and then diverges on, like SGD momentum 2). The method sections are checked
# by their losses and modules when ``pretrain`` builds them.
_VALUE_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": _safe_name(),
    "seed": _seed(),
    "data.seed": _seed(),
    "trainer.max_epochs": _at_least(1),
    "trainer.num_nodes": _at_least(1),
    "trainer.log_every_n_steps": _at_least(1),
    "trainer.checkpoint_every_n_epochs": _at_least(1),
    "trainer.num_threads": _at_least(0),
    "trainer.limit_train_batches": _positive(),
    "trainer.gradient_clip_val": ((lambda v: v is None or v >= 0), ">= 0 or null"),
    "optim.name": _one_of(OPTIMIZERS),
    "optim.scheduler": _one_of(SCHEDULERS),
    "optim.lr": _positive(),
    "optim.momentum": ((lambda v: 0 <= v < 1), "in [0, 1)"),
    "optim.weight_decay": _at_least(0),
    "optim.warmup_epochs": _at_least(0),
    "optim.trust_coefficient": _positive(),
    "trainer.enable_progress_bar": (
        (lambda v: v is True or v is False or v == "auto"), "true, false or 'auto'"),
    "data.batch_size": _at_least(1),
    "data.eval_batch_size": _at_least(1),
    "data.num_workers": _at_least(0),
    "data.image_size": _at_least(1),
    "model.width": _at_least(1),
    "model.proj_hidden_dim": _at_least(1),
    "model.proj_output_dim": _at_least(1),
    "eval.knn_k": _at_least(1),
    "eval.knn_temperature": _positive(),
    "eval.knn_every_n_epochs": _at_least(0),
    "eval.probe_val_fraction": ((lambda v: 0 < v < 1), "in (0, 1)"),
    "eval.probe_max_iter": _at_least(1),
}


def _check_leaves(node: Any, prefix: str, infinite_ok: frozenset[str] = frozenset()) -> None:
    """Refuse ``${...}`` interpolations and non-finite floats anywhere under ``node``
    (``+inf`` only for the keys in ``infinite_ok``, e.g. a method's "no limit" setting)."""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for k in keys:
        key = f"{prefix}.{k}" if isinstance(node, DictConfig) else f"{prefix}[{k}]"
        key = key.lstrip(".")
        child = node._get_node(k)
        if OmegaConf.is_interpolation(node, k):
            raise RecipeError(
                f"recipe key '{key}' uses an interpolation ({child._value()}), which is not "
                "allowed: write the value itself"
            )
        if isinstance(child, (DictConfig, ListConfig)):
            if not child._is_none() and not child._is_missing():
                _check_leaves(child, key, infinite_ok)
            continue
        value = child._value()
        if value == math.inf and key in infinite_ok:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise RecipeError(f"invalid value for recipe key '{key}': {value} (must be finite)")


def _check_values(cfg: DictConfig) -> None:
    for key, (ok, want) in _VALUE_RULES.items():
        value = OmegaConf.select(cfg, key)
        if not ok(value):
            raise RecipeError(f"invalid value for recipe key '{key}': {value!r} (must be {want})")
    pool = OmegaConf.select(cfg, "data.pool_seeds") or []
    for i, value in enumerate(pool):
        if not 0 <= value <= MAX_SEED:
            raise RecipeError(f"invalid value for recipe key 'data.pool_seeds[{i}]': {value!r} "
                              f"(must be in [0, {MAX_SEED}])")
    if cfg.optim.name == "lars" and cfg.optim.weight_decay == 0:
        raise RecipeError(
            "optim.name=lars needs optim.weight_decay > 0: lightly's LARS rescales only "
            "parameters with weight decay, so with none it is plain SGD (use optim.name=sgd)"
        )
    if cfg.optim.name != "lars" and cfg.optim.trust_coefficient != OptimConfig.trust_coefficient:
        raise RecipeError(
            f"optim.trust_coefficient={cfg.optim.trust_coefficient} applies to optim.name=lars "
            f"only (optim.name is '{cfg.optim.name}'); remove it or set optim.name=lars"
        )
    _check_logger_names(list(cfg.trainer.loggers))


def _check_logger_names(names: list[str]) -> None:
    for name in names:
        if name not in LOGGERS:
            raise RecipeError(
                f"invalid value for recipe key 'trainer.loggers': unknown logger {name!r} "
                f"(choose from {', '.join(LOGGERS)})"
            )
    if len(set(names)) != len(names):
        raise RecipeError(f"recipe key 'trainer.loggers' names a logger twice: {names}")
    if "csv" not in names:
        raise RecipeError(
            f"recipe key 'trainer.loggers' must include 'csv' (got {names}): the run's "
            "metrics.csv, read by probe and report, is written from it"
        )


def check_logger_packages(names: list[str]) -> None:
    """Refuse a ``trainer.loggers`` entry whose package is not installed (one line).

    Checked for recipes to train, not when a finished run's ``config.yaml`` is read (probe
    and report never log).
    """
    import importlib.util

    for name in names:
        need = LOGGERS.get(name)
        if need and not any(importlib.util.find_spec(p) is not None for p in need):
            raise RecipeError(
                f"trainer.loggers names '{name}', but its package is not installed "
                f"(pip install {need[0]}), or remove it from the list"
            )


def apply_overrides(
    raw: dict[str, Any], overrides: list[str] | None, *,
    method_schema: Callable[[str], type] | None = None,
) -> DictConfig:
    """Validate a raw recipe mapping plus ``key=value`` overrides against the schema.

    Args:
        raw: The recipe as a mapping.
        overrides: ``["trainer.max_epochs=5", ...]``.
        method_schema: ``name -> config dataclass`` of the methods: the ``method`` section is
            validated against it and its checks run (:func:`contrastmix.recipe.load_recipe`
            passes the registry's). ``None`` keeps the section as written, with its ``name``
            (evaluation of a finished run, which must not need the training code).
    """
    if not isinstance(raw, dict):
        raise RecipeError("a recipe must be a YAML mapping")
    ov = _nest(_parse_overrides(overrides or []))
    method = raw.get("method") or {}
    if not isinstance(method, dict):
        raise RecipeError("recipe key 'method' must be a mapping with a `name`")
    if "method" in ov and not isinstance(ov["method"], dict):
        raise RecipeError("recipe key 'method' is a section, not a value; set its keys one by "
                          "one (e.g. --set method.KEY=VALUE)")
    name = (ov.get("method") or {}).get("name", method.get("name"))
    cfg = _merge(_base_for(name, method_schema), raw)
    cfg = _merge(cfg, ov)
    # before anything reads a value (an interpolation would resolve)
    if method_schema is not None:
        inf_ok = getattr(OmegaConf.get_type(cfg, "method"), "infinite_ok", ())
        allowed = frozenset(f"method.{k}" for k in inf_ok)
    else:  # a run's config.yaml: its method section was checked against its schema at start
        allowed = frozenset(f"method.{k}" for k in cfg.method.keys())
    _check_leaves(cfg, "", allowed)
    _check_values(cfg)
    if method_schema is not None:
        _check_method(cfg)
        check_logger_packages(list(cfg.trainer.loggers))
    OmegaConf.set_struct(cfg, True)
    return cfg
