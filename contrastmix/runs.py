"""Read a finished run directory back: its recipe, its frozen backbone, its evaluation data.

Used by ``contrastmix probe`` and ``contrastmix report``. Loading never unpickles code:
``backbone.pt`` is read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from contrastmix._validation import check_finite
from contrastmix.data.registry import build_data
from contrastmix.errors import CheckpointError, ContrastmixError, RunDirError
from contrastmix.eval.probe import extract_features
from contrastmix.models.build import build_backbone
from contrastmix.rundir import read_run_config, run_paths

__all__ = [
    "load_run", "load_backbone", "extract_run_features", "resolve_device", "load_state_file",
]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The evaluation device: ``device``, or CUDA when available, else the CPU.

    Raises:
        ContrastmixError: ``device`` is not a device name, or asks for CUDA where there is none.
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
    return dev


def load_run(run_dir: str | Path) -> DictConfig:
    """Validate that ``run_dir`` is a finished run and return its recipe."""
    cfg = read_run_config(run_dir)
    p = run_paths(run_dir)
    if not p["backbone"].is_file():
        hint = (
            " (training was interrupted: resume it with `contrastmix pretrain RECIPE --out "
            f"{run_dir} --resume`)" if p["last"].is_file() else ""
        )
        raise RunDirError(f"{run_dir} has no trained backbone (backbone.pt){hint}")
    return cfg


def load_state_file(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """A ``state_dict`` file read with ``torch.load(..., weights_only=True)``.

    Args:
        path: The file.
        mmap: Map the tensors instead of reading them (for a caller that only looks at the
            file's small entries, e.g. a checkpoint's hyper-parameters).

    Raises:
        CheckpointError: the file cannot be read or does not hold a dict.
    """
    # torch maps only its zip format; any other file is read, so that it gets the errors below
    mmap = mmap and zipfile.is_zipfile(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False: never for a file a user hands in
        raise CheckpointError(
            f"cannot read {path}: not a weights-only torch file (corrupt, truncated, or it "
            "holds pickled objects other than tensors, which are never loaded)") from None
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {first}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state_dict")
    return state


def load_backbone(run_dir: str | Path, cfg: DictConfig, in_channels: int) -> nn.Module:
    """Build the recipe's backbone and load ``backbone.pt`` strictly (weights only)."""
    path = run_paths(run_dir)["backbone"]
    state = load_state_file(path)
    m = cfg.model
    net = build_backbone(
        m.backbone, in_channels=in_channels, width=m.width, cifar_stem=m.cifar_stem
    )
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(
            f"{path} does not match the recipe's backbone '{m.backbone}' (width {m.width}): "
            f"{first}"
        ) from None
    return net.eval()


def extract_run_features(
    run_dir: str | Path, device: str | torch.device | None = None, *,
    cfg: DictConfig | None = None, data: Any = None,
) -> dict[str, Any]:
    """Frozen backbone features of the run's train and test splits (test-time inputs).

    Returns:
        ``{"cfg", "task", "data", "train_x", "train_y", "test_x", "test_y"}``; pass ``cfg``
        and ``data`` to reuse an already built recipe and data bundle.
    """
    cfg = load_run(run_dir) if cfg is None else cfg
    data = build_data(cfg.data) if data is None else data  # reuse the caller's bundle
    net = load_backbone(run_dir, cfg, data.in_channels)
    dev = resolve_device(device)
    bs = cfg.data.eval_batch_size
    trx, try_ = extract_features(net, DataLoader(data.train, batch_size=bs), dev)
    tex, tey = extract_features(net, DataLoader(data.test, batch_size=bs), dev)
    check_finite("train features", trx)  # NonFiniteError: probe_run names the run
    check_finite("test features", tex)
    return {"cfg": cfg, "task": data.task, "data": data, "train_x": trx, "train_y": try_,
            "test_x": tex, "test_y": tey}
