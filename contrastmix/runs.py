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
from contrastmix.models.build import build_backbone, build_projector
from contrastmix.rundir import read_artifacts, read_run_config, run_paths

__all__ = [
    "load_run", "load_backbone", "load_projector", "extract_run_features", "resolve_device",
    "load_state_file", "FEATURE_SPACES", "EVAL_OVERRIDABLE",
]

#: Recipe sections that evaluation may change (``probe`` / ``report --set``): the data it
#: evaluates on and the protocol; the trained model and how it was trained stay as recorded.
EVAL_OVERRIDABLE: tuple[str, ...] = ("data", "eval")

#: Where ``extract_run_features`` (and ``contrastmix probe --features``) reads the features.
FEATURE_SPACES: dict[str, str] = {
    "backbone": "backbone output (projector removed)",
    "projector": "projector output (backbone + the run's projection head)",
    "projector-normalised": "L2-normalised projector output (the space the contrastive loss "
    "acts on)",
}


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


class _Normalise(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x, dim=1)


def load_projector(run_dir: str | Path, cfg: DictConfig, backbone: nn.Module) -> nn.Module:
    """The run's projection head (``artifacts.json``'s ``projector``), in eval mode.

    Built from the recipe's ``model`` section by :func:`contrastmix.models.build_projector`
    and loaded strictly, weights only.

    Raises:
        RunDirError: the run lists no projector (its method trains none) or the file is
            missing.
        CheckpointError: the file cannot be read or does not match the recipe's projector.
    """
    art = read_artifacts(run_dir)
    if art.projector is None:
        raise RunDirError(
            f"{run_dir} has no projector (its artifacts.json lists none: the method trains no "
            "projection head); probe --features backbone"
        )
    path = Path(run_dir) / art.projector
    if not path.is_file():
        raise RunDirError(f"{run_dir}: artifacts.json lists the projector {art.projector}, "
                          "but the file is missing")
    out_dim = getattr(backbone, "output_dim", None)
    if not isinstance(out_dim, int):
        raise RunDirError(f"{run_dir}: the backbone does not say its output_dim; cannot build "
                          "the projector")
    m = cfg.model
    proj = build_projector(out_dim, int(m.proj_hidden_dim), int(m.proj_output_dim),
                           batch_norm=bool(m.get("proj_batch_norm", False)))
    load_strict(proj, path, f"recipe's projector ({m.proj_hidden_dim} -> {m.proj_output_dim})")
    return proj.eval()


def extract_run_features(
    run_dir: str | Path, device: str | torch.device | None = None, *,
    cfg: DictConfig | None = None, data: Any = None, progress_bar: bool | str | None = "auto",
    features: str = "backbone",
) -> dict[str, Any]:
    """Frozen features of the run's train and test splits (test-time inputs).

    Args:
        run_dir: A finished run directory.
        device: Where the network runs (default: CUDA when available, else the CPU).
        cfg: The run's recipe, when already read.
        data: The run's data bundle, when already built.
        features: One of :data:`FEATURE_SPACES`: ``"backbone"`` (default), ``"projector"``
            or ``"projector-normalised"`` (the last two need a run that saved a projector).
        progress_bar: A ``tqdm`` bar per split on stderr: ``True`` / ``False``, or ``"auto"``
            (``None``): when stderr is a terminal.

    Returns:
        ``{"cfg", "task", "data", "train_x", "train_y", "test_x", "test_y", "features"}``.

    Raises:
        ContrastmixError: unknown ``features``; RunDirError / CheckpointError: see
            :func:`load_projector`.
    """
    if features not in FEATURE_SPACES:
        raise ContrastmixError(
            f"unknown feature space {features!r}; use one of {', '.join(FEATURE_SPACES)}")
    cfg = load_run(run_dir) if cfg is None else cfg
    data = build_data(cfg.data) if data is None else data  # reuse the caller's bundle
    net: nn.Module = load_backbone(run_dir, cfg, data.in_channels)
    if features != "backbone":
        parts = [net, load_projector(run_dir, cfg, net)]
        if features == "projector-normalised":
            parts.append(_Normalise())
        net = nn.Sequential(*parts).eval()
    dev = resolve_device(device)
    bs = cfg.data.eval_batch_size
    trx, try_ = extract_features(
        net, progress(DataLoader(data.train, batch_size=bs), "train features", progress_bar), dev)
    tex, tey = extract_features(
        net, progress(DataLoader(data.test, batch_size=bs), "test features", progress_bar), dev)
    check_finite("train features", trx)  # NonFiniteError: probe_run names the run
    check_finite("test features", tex)
    return {"cfg": cfg, "task": data.task, "data": data, "train_x": trx, "train_y": try_,
            "test_x": tex, "test_y": tey, "features": features}
