"""``contrastmix probe``: the frozen-feature evaluation of a finished run, from its files.

:func:`probe_run` reads the run directory (``config.yaml``, ``backbone.pt`` and what
``artifacts.json`` lists; see :mod:`contrastmix.rundir`) and never the training code. The
protocol is in docs/methods.md §9 and the README's *Evaluation protocol*.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from contrastmix._json import to_jsonable
from contrastmix._numerics import unit_rows
from contrastmix._validation import NonFiniteError
from contrastmix.data.registry import build_data
from contrastmix.errors import ContrastmixError, DatasetError, EmbeddingError
from contrastmix.eval.collapse import neural_collapse
from contrastmix.eval.geometry import effective_rank, uniformity
from contrastmix.eval.knn import knn_predict
from contrastmix.eval.multimodal import probe_multimodal_run
from contrastmix.eval.ordering import distance_spearman
from contrastmix.eval.probe import linear_probe
from contrastmix.runs import FEATURE_SPACES, extract_run_features, load_run, resolve_device

__all__ = ["probe_run"]


def probe_run(
    run_dir: str | Path, *, knn: bool = False, geometry: bool = False,
    device: str | None = None, overrides: Sequence[str] | None = None,
    progress_bar: bool | str | None = "auto", features: str = "backbone",
) -> dict[str, Any]:
    """The frozen-feature evaluation of a run: linear probe (+ kNN, + geometry).

    Args:
        run_dir: A finished run directory.
        knn: Also the weighted kNN accuracy (classification).
        geometry: Also uniformity, effective rank and neural collapse.
        device: ``cpu`` / ``cuda`` (default: CUDA when available).
        overrides: ``data.*`` / ``eval.*`` ``KEY=VALUE`` items for this evaluation (e.g.
            ``data.root=LABELLED_DIR``; see :func:`contrastmix.runs.load_run`).
        progress_bar: Bars for the feature extraction on stderr (``"auto"``: when it is a
            terminal).
        features: Where the features come from (recorded as ``"features"``):
            ``"backbone"`` (default), ``"projector"`` or ``"projector-normalised"``
            (see :data:`contrastmix.runs.FEATURE_SPACES`).

    Returns:
        One JSON-serialisable dict: the metrics plus the exact protocol used.
    """
    device = resolve_device(device)  # a bad --device fails before any work
    if features not in FEATURE_SPACES:
        raise ContrastmixError(
            f"unknown --features {features!r}; use one of {', '.join(FEATURE_SPACES)}")
    try:
        return _probe_run(run_dir, knn=knn, geometry=geometry, device=device,
                          overrides=overrides, progress_bar=progress_bar, features=features)
    except NonFiniteError as e:  # a NaN / inf that a metric found in the run's embeddings
        raise EmbeddingError(
            f"{run_dir}: the trained model gives non-finite embeddings ({e}). The run diverged "
            "(lower optim.lr, or set trainer.gradient_clip_val) or its weights are corrupt"
        ) from e


def _probe_run(
    run_dir: str | Path, *, knn: bool, geometry: bool, device: torch.device, features: str,
    overrides: Sequence[str] | None = None, progress_bar: bool | str | None = "auto",
) -> dict[str, Any]:
    cfg = load_run(run_dir, overrides)

    bundle = build_data(cfg.data)
    if bundle.extras and bundle.extras.get("unlabelled"):  # e.g. `arrays` without `y`
        raise DatasetError(f"cannot probe {run_dir}: {bundle.extras['unlabelled']}")
    if bundle.task == "multimodal":  # retrieval, zero-shot, gap, fusion heads
        if features != "backbone":
            raise ContrastmixError(
                f"--features {features} is for classification and regression runs; "
                f"{run_dir} is a multimodal run (its probe uses each tower's embeddings)")
        return probe_multimodal_run(run_dir, cfg, device)
    f = extract_run_features(run_dir, device, cfg=cfg, data=bundle, progress_bar=progress_bar,
                             features=features)
    data = bundle
    out: dict[str, Any] = {"run": str(run_dir), "method": cfg.method.name,
                           "dataset": cfg.data.name, "features": features}
    if overrides:
        out["overrides"] = list(overrides)
    res = linear_probe(
        f["train_x"], f["train_y"], f["test_x"], f["test_y"], task=f["task"],
        val_fraction=cfg.eval.probe_val_fraction, max_iter=cfg.eval.probe_max_iter,
        seed=cfg.seed, groups=data.test_groups,
        group_names=list(data.group_names) if data.group_names else None,
    )
    out.update(to_jsonable(res))
    if f["task"] == "regression":
        out["spearman"] = float(distance_spearman(f["test_x"], f["test_y"], seed=cfg.seed))
    out["protocol"] = {
        "features": f"{FEATURE_SPACES[features]}, network in eval mode, "
        "test-time inputs (no augmentation), extracted once",
        "probe": "linear model on cached features; penalty chosen on a validation split "
        "of train, refit on train+val; last model reported",
    }
    if knn and f["task"] == "classification":
        k, t = cfg.eval.knn_k, cfg.eval.knn_temperature
        pred = knn_predict(f["train_x"], f["train_y"], f["test_x"], k=k, temperature=t)
        out["knn_accuracy"] = float((pred.cpu() == f["test_y"].cpu()).float().mean())
        out["knn"] = {"k": min(k, len(f["train_x"])), "temperature": t,
                      "features": f"L2-normalised {features} features"}
    if geometry:
        z = unit_rows(f["test_x"].double(), dim=1)
        out["geometry"] = {
            "uniformity": float(uniformity(z)),
            "effective_rank": float(effective_rank(f["test_x"])),
        }
        if f["task"] == "classification":
            nc = neural_collapse(f["test_x"], f["test_y"])
            out["geometry"]["neural_collapse"] = to_jsonable(nc)
    return out
