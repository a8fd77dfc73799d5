"""The experiment loggers named by a recipe's ``trainer.loggers``.

``csv`` is always among them (``pretrain`` merges its ``logs/version_*/metrics.csv`` into the
run's ``metrics.csv``, which ``probe`` and ``report`` read); ``tensorboard`` writes ``tb/``,
``mlflow`` ``mlruns/`` (unless ``MLFLOW_TRACKING_URI`` names a server) and ``wandb`` ``wandb/``
in the run directory. The names and packages are validated with the recipe
(:mod:`contrastmix.config`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pytorch_lightning.loggers import Logger

from contrastmix.config import LOGGERS

__all__ = ["build_loggers"]


def build_loggers(names: Sequence[str], run_dir: Path, run_name: str) -> list[Logger]:
    """One Lightning logger per name, writing into ``run_dir``.

    Args:
        names: ``trainer.loggers`` (validated: known names, ``csv`` included).
        run_dir: The run directory.
        run_name: The recipe's ``name`` (the run's name in wandb / mlflow).

    Raises:
        ValueError: an unknown name.
        ImportError: a logger whose package is missing (Lightning's message).
    """
    from pytorch_lightning import loggers as pl_loggers

    out: list[Logger] = []
    for name in names:
        if name == "csv":
            out.append(pl_loggers.CSVLogger(str(run_dir), name="logs"))
        elif name == "tensorboard":
            out.append(pl_loggers.TensorBoardLogger(str(run_dir), name="tb"))
        elif name == "wandb":
            out.append(pl_loggers.WandbLogger(name=run_name, project="contrastmix",
                                              save_dir=str(run_dir)))
        elif name == "mlflow":
            out.append(pl_loggers.MLFlowLogger(experiment_name="contrastmix", run_name=run_name,
                                               save_dir=str(run_dir / "mlruns")))
        else:
            raise ValueError(f"unknown logger {name!r}; choose from {', '.join(LOGGERS)}")
    return out
