"""Run a recipe: build data and module, train with Lightning, write the run directory.

Run directory layout::

    config.yaml            the resolved recipe
    checkpoints/last.ckpt  Lightning checkpoint (model, queue + pointer, optimiser, loops)
    backbone.pt            encoder state_dict (torch.load(..., weights_only=True))
    metrics.csv            every logged metric, all resumed segments merged
    logs/version_*/        raw CSV logs per segment; tb/ TensorBoard logs
    run.json               summary: method, epochs, wall time, last metrics
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from contrastmix.data.registry import DataBundle, build_data
from contrastmix.errors import CheckpointError, ContrastmixError, RecipeError, RunDirError

__all__ = ["pretrain", "register_module", "build_module", "run_paths", "read_run_config"]

ModuleFactory = Callable[[dict[str, Any], DataBundle, int], pl.LightningModule]
_FACTORIES: dict[str, ModuleFactory] = {}


def register_module(method: str, factory: ModuleFactory) -> None:
    """Register the Lightning module factory ``(cfg, data, steps_per_epoch) -> module``."""
    _FACTORIES[method] = factory


def _moco_factory(cfg: dict[str, Any], data: DataBundle, steps: int) -> pl.LightningModule:
    from contrastmix.train.moco import MoCoModule

    return MoCoModule(cfg, data.in_channels, data.batch_augment, steps)


register_module("moco", _moco_factory)
register_module("mochi", _moco_factory)


def build_module(cfg: dict[str, Any], data: DataBundle, steps: int) -> pl.LightningModule:
    """Instantiate the module registered for ``cfg['method']['name']``."""
    import importlib

    for mod in ("regression", "multimodal", "supervised"):  # register their factories
        importlib.import_module(f"contrastmix.train.{mod}")
    name = cfg["method"]["name"]
    if name not in _FACTORIES:
        raise CheckpointError(f"no training module registered for method '{name}'")
    return _FACTORIES[name](cfg, data, steps)


def run_paths(run_dir: str | Path) -> dict[str, Path]:
    """Standard paths inside a run directory."""
    r = Path(run_dir)
    return {
        "config": r / "config.yaml",
        "ckpt_dir": r / "checkpoints",
        "last": r / "checkpoints" / "last.ckpt",
        "backbone": r / "backbone.pt",
        "metrics": r / "metrics.csv",
        "summary": r / "run.json",
    }


def read_run_config(run_dir: str | Path) -> DictConfig:
    """Load and re-validate a run directory's ``config.yaml``."""
    import yaml

    from contrastmix.config import apply_overrides

    p = run_paths(run_dir)["config"]
    if not Path(run_dir).is_dir():
        raise RunDirError(f"run directory does not exist: {run_dir}")
    if not p.is_file():
        raise RunDirError(f"{run_dir} is not a run directory (no config.yaml)")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0]
        raise RunDirError(f"{p} is not valid YAML ({first}); was it edited?") from None
    return apply_overrides(raw or {}, [])


# Sections a resumed run must share with its checkpoint: they fix the weights' and the queue's
# shapes, what the loss means, the optimiser state (whose restored learning rates would
# silently win over new ones) and the steps per epoch. trainer and eval settings may change
# (e.g. more epochs), and so may the keys in _RESUME_FREE (where the data lives, loader).
_RESUME_FIXED = ("method", "model", "optim", "data")
_RESUME_FREE = ("data.num_workers", "data.eval_batch_size", "data.root", "data.download")


def _differences(saved: Any, now: Any, prefix: str) -> list[str]:
    """``key: saved -> now`` for every leaf of ``saved`` that ``now`` changes (keys that only
    one side has are skipped: a run from an older schema still resumes)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out: list[str] = []
        for k in saved:
            if k in now and f"{prefix}.{k}" not in _RESUME_FREE:
                out += _differences(saved[k], now[k], f"{prefix}.{k}")
        return out
    return [] if saved == now else [f"{prefix}: {saved!r} -> {now!r}"]


def _check_checkpoint(path: Path, cfg: DictConfig) -> None:
    """The checkpoint a run resumes from must be of the recipe's method and share its
    :data:`_RESUME_FIXED` sections (otherwise restoring it fails deep inside Lightning)."""
    from contrastmix.runs import load_state_file

    method = cfg.method.name
    # weights only (a corrupt / foreign file is a CheckpointError); mapped, not read: only the
    # hyper-parameters are looked at here, and Lightning reads the whole file when it resumes
    ckpt = load_state_file(path, mmap=True)
    saved_cfg = ckpt.get("hyper_parameters", {}).get("cfg") or {}
    saved = saved_cfg.get("method", {}).get("name")
    if saved != method:
        raise CheckpointError(
            f"checkpoint {path} was trained with method '{saved}', the recipe asks for '{method}'"
        )
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    changed = [d for s in _RESUME_FIXED for d in _differences(saved_cfg.get(s), plain[s], s)]
    if changed:
        raise CheckpointError(
            f"cannot resume {path} with other {' / '.join(_RESUME_FIXED)} settings: "
            f"{'; '.join(changed)}. Resume with the run's values, or start a new run (--out)"
        )


def _merge_metrics(run_dir: Path) -> None:
    """Merge ``logs/version_*/metrics.csv`` into ``metrics.csv`` (later segments win)."""
    rows: dict[tuple[str, str, str], dict[str, str]] = {}
    keys: list[str] = []
    versions = sorted(
        (run_dir / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[-1])
    )
    for v in versions:
        f = v / "metrics.csv"
        if not f.is_file():
            continue
        with f.open(newline="") as fh:
            for row in csv.DictReader(fh):
                for k in row:
                    if k not in keys:
                        keys.append(k)
                metric_names = ",".join(sorted(k for k, val in row.items() if val != ""))
                rows[(row.get("epoch", ""), row.get("step", ""), metric_names)] = row
    if not rows:
        return
    keys = sorted(keys, key=lambda k: (k not in ("epoch", "step"), k))
    ordered = sorted(rows.values(), key=lambda r: (float(r.get("step") or 0)))
    with (run_dir / "metrics.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(ordered)


def _limit(value: float) -> float | int | None:
    """``trainer.limit_train_batches``: a fraction in (0, 1), or a number of batches (> 1)."""
    if value == 1.0:
        return None
    return int(value) if value > 1 else float(value)


def _quiet_lightning() -> None:
    """Drop Lightning's advertising tips and known-harmless deprecation chatter."""
    import logging
    import warnings

    class _NoTips(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "litlogger" not in record.getMessage()

    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_NoTips())
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")


@contextlib.contextmanager
def _recipe_values(sections: str) -> Iterator[None]:
    """Report what the code built from the recipe's ``sections`` rejected (a ``ValueError``
    from a loss or model, Lightning's ``MisconfigurationException`` or ``TypeError`` (e.g.
    ``trainer.devices=[0, 1]`` on CPUs), a missing optional package) as a
    :class:`~contrastmix.errors.RecipeError`, before any training: the CLI then
    prints one line, not a traceback from deep inside. Our own errors pass unchanged."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    try:
        yield
    except ContrastmixError:
        raise
    except (ValueError, TypeError, MisconfigurationException, ImportError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RecipeError(f"recipe {sections} settings rejected: {msg}") from e


def _check_trainer(cfg: DictConfig) -> None:
    """Trainer settings that would only fail deep inside Lightning / DDP, named up front."""
    t = cfg.trainer
    on_cpu = t.accelerator == "cpu" or (t.accelerator == "auto" and not torch.cuda.is_available())
    if t.sync_batchnorm and on_cpu:
        raise RecipeError(
            "trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm runs only on CUDA "
            "modules); set it to false for CPU runs"
        )


def pretrain(
    cfg: DictConfig, out: str | Path | None = None, *, resume: bool = False,
    extra_callbacks: list[pl.Callback] | None = None,
) -> Path:
    """Train ``cfg`` and write the run directory; returns its path.

    Args:
        cfg: A validated recipe (:func:`contrastmix.config.load_recipe`).
        out: Run directory (default ``runs/<recipe name>``).
        resume: Continue from ``checkpoints/last.ckpt`` (queue, pointer, optimiser, epoch).
        extra_callbacks: More Lightning callbacks (tests use this to interrupt a run).

    Raises:
        RunDirError: resuming without a checkpoint, or starting over an existing run.
        CheckpointError: resuming a checkpoint of another method.
        RecipeError: trainer settings that cannot work here (``sync_batchnorm`` on CPUs),
            or a value that the data, model, method, optimiser, kNN monitor or Lightning
            rejects when built (e.g. ``method.temperature=0``, ``trainer.precision=17``).
    """
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from contrastmix.train.allocator import keep_freed_memory
    from contrastmix.train.callbacks import OnlineKNN, SaveOnInterrupt

    _check_trainer(cfg)
    run_dir = Path(out if out is not None else Path("runs") / cfg.name)
    paths = run_paths(run_dir)
    method = cfg.method.name
    ckpt_path: str | None = None
    if resume:
        if not paths["last"].is_file():
            raise RunDirError(f"cannot resume: no checkpoint at {paths['last']}")
        # the checkpoint's own recipe: its method, and the sections that must not change
        _check_checkpoint(paths["last"], cfg)
        ckpt_path = str(paths["last"])
    elif paths["last"].is_file():
        raise RunDirError(
            f"{run_dir} already holds a run (checkpoints/last.ckpt); pass --resume to continue "
            "it or --out to start a new one"
        )

    _quiet_lightning()
    if cfg.trainer.keep_freed_memory:
        keep_freed_memory()
    if cfg.trainer.num_threads > 0:
        torch.set_num_threads(cfg.trainer.num_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    is_rank0 = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0

    with _recipe_values("data"):
        data = build_data(cfg.data)
        loader = DataLoader(
            data.pretrain, batch_size=cfg.data.batch_size, shuffle=True,
            num_workers=cfg.data.num_workers, drop_last=cfg.data.drop_last,
            collate_fn=data.collate_fn, persistent_workers=cfg.data.num_workers > 0,
        )
    world = int(cfg.trainer.devices) if str(cfg.trainer.devices).isdigit() else 1
    world *= cfg.trainer.num_nodes
    steps = max(1, len(loader) // max(1, world))
    limit = _limit(cfg.trainer.limit_train_batches)
    if isinstance(limit, float):
        steps = max(1, int(steps * limit))
    elif isinstance(limit, int):
        steps = min(steps, limit)
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    with _recipe_values("method and model"):
        module = build_module(plain, data, steps)  # type: ignore[arg-type]

    callbacks: list[pl.Callback] = [
        ModelCheckpoint(
            dirpath=paths["ckpt_dir"], filename="last", save_top_k=1, monitor=None,
            enable_version_counter=False, every_n_epochs=cfg.trainer.checkpoint_every_n_epochs,
        ),
        SaveOnInterrupt(str(paths["last"])),
        LearningRateMonitor(logging_interval="epoch"),
    ]
    if data.task == "classification" and cfg.eval.knn_every_n_epochs > 0:
        with _recipe_values("eval"):
            callbacks.append(
                OnlineKNN(
                    data.train, data.test, k=cfg.eval.knn_k,
                    temperature=cfg.eval.knn_temperature, every=cfg.eval.knn_every_n_epochs,
                    batch_size=cfg.data.eval_batch_size, collate_fn=None,
                )
            )
    callbacks += extra_callbacks or []
    t = cfg.trainer
    with _recipe_values("trainer"):
        trainer = pl.Trainer(
            max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices,
            num_nodes=t.num_nodes, strategy=t.strategy, precision=t.precision,
            log_every_n_steps=t.log_every_n_steps, deterministic=t.deterministic,
            enable_progress_bar=t.enable_progress_bar,
            limit_train_batches=_limit(t.limit_train_batches),
            gradient_clip_val=t.gradient_clip_val, sync_batchnorm=t.sync_batchnorm,
            callbacks=callbacks,
            logger=[CSVLogger(str(run_dir), name="logs"),
                    TensorBoardLogger(str(run_dir), name="tb")],
            enable_model_summary=False, default_root_dir=str(run_dir),
        )
    # only a recipe that built is written down
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_rank0:
        paths["config"].write_text(OmegaConf.to_yaml(cfg))
    start = time.time()
    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path, weights_only=True)
    wall = time.time() - start
    if trainer.is_global_zero:
        torch.save(module.backbone.state_dict(), paths["backbone"])  # type: ignore[attr-defined]
        if hasattr(module, "export_artifacts"):  # e.g. a multimodal model's towers and heads
            module.export_artifacts(run_dir)
        _merge_metrics(run_dir)
        last = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        summary = {
            "method": method, "epochs": trainer.current_epoch, "global_step": trainer.global_step,
            "wall_time_s": round(wall, 2), "resumed": resume, "metrics": last,
        }
        paths["summary"].write_text(json.dumps(summary, indent=2))
    return run_dir
