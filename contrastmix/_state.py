"""Read and load ``state_dict`` files: weights only, every problem a one-line error.

Shared by the backbone builder (``model.weights``) and the run readers
(:mod:`contrastmix.runs`).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contrastmix.errors import CheckpointError

__all__ = ["load_state_file", "load_strict", "state_mismatch"]


def load_state_file(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """A ``state_dict`` file read with ``torch.load(..., weights_only=True)``.

    Args:
        path: The file.
        mmap: Map the tensors instead of reading them (for a caller that only looks at the
            file's small entries, e.g. a checkpoint's hyper-parameters).

    Raises:
        CheckpointError: the file cannot be read or does not hold a dict.
    """
    if not Path(path).is_file():
        raise CheckpointError(f"cannot read {path}: no such file")
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


def _names(keys: list[str], limit: int = 4) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def state_mismatch(net: nn.Module, state: dict[str, Any]) -> str | None:
    """Why ``state`` does not load strictly into ``net`` (missing / unexpected keys, shapes),
    or ``None`` when it does."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {list(state[k].shape)} vs {list(v.shape)}" for k, v in own.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    parts = []
    if missing:
        parts.append(f"missing keys {_names(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_names(unexpected)}")
    if shapes:
        parts.append(f"shapes (file vs model) {_names(shapes, 2)}")
    return "; ".join(parts) or None


def load_strict(net: nn.Module, path: str | Path, what: str) -> nn.Module:
    """Load the ``state_dict`` file ``path`` into ``net`` strictly (weights only).

    Args:
        net: The module.
        path: The file.
        what: The module in words, for the error (e.g. ``"backbone 'timm:resnet18'"``).

    Raises:
        CheckpointError: the file cannot be read, or its keys or shapes differ from ``net``'s.
    """
    state = load_state_file(path)
    problem = state_mismatch(net, state)
    if problem is None:
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:  # e.g. a non-tensor entry
            problem = (str(e).strip().splitlines() or [""])[-1].strip()
    if problem is not None:
        raise CheckpointError(f"{path} does not match the {what}: {problem}")
    return net
