"""Read a finished run directory back: its recipe, its frozen backbone, its evaluation data.

Used by ``contrastmix probe`` and ``contrastmix report``. Loading never unpickles code:
``backbone.pt`` is read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from contrastmix._progress import progress
from contrastmix._state import load_state_file, load_strict
from contrastmix._validation import check_finite
from contrastmix.config import apply_overrides
from contrastmix.data.registry import build_data
from contrastmix.errors import ContrastmixError, RecipeError, RunDirError
from contrastmix.eval.probe import extract_features
from contrastmix.models.build import build_backbone
from contrastmix.rundir import read_artifacts, read_run_config, run_paths

__all__ = [
    "load_run", "load_backbone", "extract_run_features", "resolve_device", "load_state_file",
    "EVAL_OVERRIDABLE",
]

#: Recipe sections that evaluation may change (``probe`` / ``report --set``): the data it
#: evaluates on and the protocol; the trained model and how it was trained stay as recorded.
EVAL_OVERRIDABLE: tuple[str, ...] = ("data", "eval")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The evaluation device: ``device``, or CUDA when available, else the CPU.

    Raises:
        ContrastmixError: ``device`` is not a device name, is not a CPU / CUDA / MPS device,
            or asks for a GPU that this machine does not have.
    """
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ContrastmixError(
            f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ContrastmixError(f"device {device!r} asked for, but no CUDA GPU is available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ContrastmixError(f"device {device!r} asked for, but this machine has "
                               f"{torch.cuda.device_count()} CUDA GPU(s) (cuda:0 ...)")
    if dev.type == "mps" and not (torch.backends.mps.is_built()
                                  and torch.backends.mps.is_available()):
        raise ContrastmixError(f"device {device!r} asked for, but MPS is not available here")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ContrastmixError(
            f"unsupported device {device!r}; use 'cpu', 'cuda' or 'cuda:N'")
    return dev


def load_run(run_dir: str | Path, overrides: Sequence[str] | None = None) -> DictConfig:
    """Validate that ``run_dir`` is a finished run and return its recipe.

    Args:
        run_dir: The run directory.
        overrides: ``KEY=VALUE`` items applied to the recipe for evaluation only (the run's
            ``config.yaml`` is not changed), e.g. ``data.root=LABELLED_DIR`` to evaluate a run
            pretrained on unlabelled images on a labelled folder. Only keys of the
            :data:`EVAL_OVERRIDABLE` sections; relative paths are relative to the working
            directory.

    Raises:
        RunDirError: not a finished run.
        RecipeError: an override outside ``data.*`` / ``eval.*``, or one that does not
            validate.
    """
    cfg = read_run_config(run_dir)
    if overrides:
        for item in overrides:
            key = item.split("=", 1)[0].strip()
            if key.split(".", 1)[0] not in EVAL_OVERRIDABLE or "." not in key:
                allowed = ", ".join(f"{s}.*" for s in EVAL_OVERRIDABLE)
                raise RecipeError(
                    f"--set {item}: evaluation may change only {allowed} keys (e.g. "
                    "data.root=LABELLED_DIR); the model stays as the run trained it")
        plain = OmegaConf.to_container(cfg, resolve=False)
        assert isinstance(plain, dict)
        cfg = apply_overrides(plain, list(overrides))
    p = run_paths(run_dir)
    if not p["backbone"].is_file():
        hint = (
            " (training was interrupted: resume it with `contrastmix pretrain RECIPE --out "
            f"{run_dir} --resume`)" if p["last"].is_file() else ""
        )
        raise RunDirError(f"{run_dir} has no trained backbone (backbone.pt){hint}")
    return cfg


def load_backbone(
    run_dir: str | Path, cfg: DictConfig | None = None, in_channels: int | None = None,
) -> nn.Module:
    """The run's trained backbone, in eval mode: ``contrastmix.load_backbone(RUN_DIR)``.

    Builds the recipe's ``model.backbone`` (never its ``model.weights``: the run's own weights
    replace them) and loads ``backbone.pt`` strictly, weights only. For a ``timm:`` or
    ``torchvision:`` backbone the module is the library's own model (see
    :mod:`contrastmix.models.external`).

    Args:
        run_dir: A finished run directory.
        cfg: Its recipe, when already read (default: its ``config.yaml``).
        in_channels: The data's channels (tabular: features); default what the run recorded
            in ``artifacts.json``, or for an older run, the channels of its data bundle.

    Returns:
        The backbone, mapping a batch of the run's inputs to ``[B, output_dim]`` features.

    Raises:
        RunDirError: not a finished run, or a ``config.yaml`` whose backbone no longer builds.
        CheckpointError: ``backbone.pt`` cannot be read or does not match the backbone.
    """
    cfg = load_run(run_dir) if cfg is None else cfg
    if in_channels is None:
        recorded = read_artifacts(run_dir).backbone or {}
        in_channels = recorded.get("in_channels")
        if not isinstance(in_channels, int):
            in_channels = build_data(cfg.data).in_channels  # a run that did not record it
    m = cfg.model
    try:
        net = build_backbone(m.backbone, in_channels=int(in_channels), width=m.width,
                             cifar_stem=m.cifar_stem)
    except ContrastmixError:
        raise
    except ValueError as e:
        raise RunDirError(f"{run_dir}: the recipe's backbone does not build: {e}") from None
    load_strict(net, run_paths(run_dir)["backbone"],
                f"recipe's backbone '{m.backbone}' (width {m.width})")
    return net.eval()


def extract_run_features(
    run_dir: str | Path, device: str | torch.device | None = None, *,
    cfg: DictConfig | None = None, data: Any = None, progress_bar: bool | str | None = "auto",
) -> dict[str, Any]:
    """Frozen backbone features of the run's train and test splits (test-time inputs).

    Args:
        run_dir: A finished run directory.
        device: Where the backbone runs (default: CUDA when available, else the CPU).
        cfg: The run's recipe, when already read.
        data: The run's data bundle, when already built.
        progress_bar: A ``tqdm`` bar per split on stderr: ``True`` / ``False``, or ``"auto"``
            (``None``): when stderr is a terminal.

    Returns:
        ``{"cfg", "task", "data", "train_x", "train_y", "test_x", "test_y"}``; pass ``cfg``
        and ``data`` to reuse an already built recipe and data bundle.
    """
    cfg = load_run(run_dir) if cfg is None else cfg
    data = build_data(cfg.data) if data is None else data  # reuse the caller's bundle
    net = load_backbone(run_dir, cfg, data.in_channels)
    dev = resolve_device(device)
    bs = cfg.data.eval_batch_size
    trx, try_ = extract_features(
        net, progress(DataLoader(data.train, batch_size=bs), "train features", progress_bar), dev)
    tex, tey = extract_features(
        net, progress(DataLoader(data.test, batch_size=bs), "test features", progress_bar), dev)
    check_finite("train features", trx)  # NonFiniteError: probe_run names the run
    check_finite("test features", tex)
    return {"cfg": cfg, "task": data.task, "data": data, "train_x": trx, "train_y": try_,
            "test_x": tex, "test_y": tey}
