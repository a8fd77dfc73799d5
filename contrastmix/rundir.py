"""The files of a run directory, read without the training code.

A run directory is what ``contrastmix pretrain`` writes and what evaluation
(:mod:`contrastmix.runs`, :mod:`contrastmix.eval`) reads. This module names its files and reads
its recipe; it imports neither Lightning nor the methods' training modules, so
``contrastmix probe`` and ``contrastmix report`` work where only the core is installed.

Layout::

    config.yaml            the resolved recipe
    checkpoints/last.ckpt  Lightning checkpoint (model, queue + pointer, optimiser, loops)
    backbone.pt            encoder state_dict (torch.load(..., weights_only=True))
    artifacts.json         what the method left for evaluation (see RunArtifacts)
    metrics.csv            every logged metric, all resumed segments merged
    logs/version_*/        raw CSV logs per segment; tb/ TensorBoard logs
    run.json               summary: method, epochs, wall time, last metrics
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from contrastmix._json import dumps
from contrastmix.config import apply_overrides, load_yaml_file
from contrastmix.errors import RunDirError

__all__ = ["run_paths", "read_run_config", "RunArtifacts", "read_artifacts", "write_artifacts",
           "ARTIFACTS_FILE"]

#: The file in which a method lists what it left for evaluation.
ARTIFACTS_FILE = "artifacts.json"


def run_paths(run_dir: str | Path) -> dict[str, Path]:
    """Standard paths inside a run directory."""
    r = Path(run_dir)
    return {
        "config": r / "config.yaml",
        "ckpt_dir": r / "checkpoints",
        "last": r / "checkpoints" / "last.ckpt",
        "backbone": r / "backbone.pt",
        "artifacts": r / ARTIFACTS_FILE,
        "metrics": r / "metrics.csv",
        "summary": r / "run.json",
    }


def read_run_config(run_dir: str | Path) -> DictConfig:
    """Load a run directory's ``config.yaml`` and re-validate its shared sections.

    The ``method`` section is kept as the run wrote it (a mapping with a ``name``): it was
    validated against its method's schema when the run started, and evaluation must not need
    the method's training code to read it.

    Raises:
        RunDirError: no such directory, no ``config.yaml``, or a file that is not YAML.
        RecipeError: a shared section that does not validate (an edited file).
    """
    p = run_paths(run_dir)["config"]
    if not Path(run_dir).is_dir():
        raise RunDirError(f"run directory does not exist: {run_dir}")
    if not p.is_file():
        raise RunDirError(f"{run_dir} is not a run directory (no config.yaml)")
    try:
        raw = load_yaml_file(p, str(p), RunDirError)  # bounded size, no aliases
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0]
        raise RunDirError(f"{p} is not valid YAML ({first}); was it edited?") from None
    return apply_overrides(raw or {}, [])  # no method schema: the section as written


@dataclass
class RunArtifacts:
    """What a method leaves in its run directory for evaluation (``artifacts.json``).

    Every file name is relative to the run directory. Evaluation uses what is listed and never
    asks which method wrote it.

    Attributes:
        projector: ``state_dict`` file of the projection head (the recipe's ``model`` section
            builds it: :func:`contrastmix.models.build_projector`), or ``None``.
        key_encoder: ``state_dict`` file of a momentum encoder with the architecture of
            ``Sequential(backbone, projector)``, or ``None``.
        queue: File holding ``{"features": Tensor[K, d]}``, the negatives the run ended with
            (only the filled rows), or ``None``.
        synthetic_negatives: Hard-negative mixing to show in the similarity histograms,
            ``{"num_hard": N, "num_mix": s, "num_query_mix": s'}``, or ``None``.
        curve_markers: Vertical markers for the training curves, e.g.
            ``[{"epoch": 10, "label": "mixing starts", "metrics": ["proxy_acc"]}]``.
        expected_metrics: Logged metrics the report should name when missing.
        files: Further files (name -> description), e.g. a classifier's weights.
        backbone: How to rebuild the module of ``backbone.pt`` beyond ``config.yaml``:
            ``{"in_channels": N}`` (the data's channels / tabular features), or ``None`` (a
            run written before runs recorded it: the data bundle says).
    """

    projector: str | None = None
    key_encoder: str | None = None
    queue: str | None = None
    synthetic_negatives: dict[str, int] | None = None
    curve_markers: list[dict[str, Any]] = field(default_factory=list)
    expected_metrics: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    backbone: dict[str, Any] | None = None


def write_artifacts(run_dir: str | Path, artifacts: RunArtifacts) -> Path:
    """Write ``artifacts.json`` (atomically: a temporary file renamed over the old one)."""
    path = run_paths(run_dir)["artifacts"]
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(dumps(asdict(artifacts), indent=2))
    tmp.replace(path)
    return path


def read_artifacts(run_dir: str | Path) -> RunArtifacts:
    """The run's :class:`RunArtifacts` (empty when the run wrote none).

    Every listed file name must stay inside the run directory.

    Raises:
        RunDirError: ``artifacts.json`` is not valid JSON, has unknown keys, or names a file
            outside the run directory.
    """
    path = run_paths(run_dir)["artifacts"]
    if not path.is_file():
        return RunArtifacts()
    try:
        raw = json.loads(path.read_text())
        art = RunArtifacts(**raw)
    except (json.JSONDecodeError, TypeError) as e:
        raise RunDirError(f"{path} is not a valid artifacts file: {e}") from None
    root = Path(run_dir).resolve()
    names = [art.projector, art.key_encoder, art.queue, *art.files]
    for name in names:
        if name is None:
            continue
        if not isinstance(name, str) or not (root / name).resolve().is_relative_to(root):
            raise RunDirError(f"{path} names a file outside the run directory: {name!r}")
    return art
