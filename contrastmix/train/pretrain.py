"""Run a recipe: build data and method, train with Lightning, write the run directory.

The run directory's layout is described in :mod:`contrastmix.rundir`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from contrastmix._atomic import write_json, write_text
from contrastmix._progress import progress_enabled
from contrastmix.data.registry import DataBundle, build_data
from contrastmix.errors import (
    CheckpointError,
    ContrastmixError,
    RecipeError,
    RunDirError,
    RunInterrupted,
)
from contrastmix.methods import Method, get_method
from contrastmix.rundir import LOCK_FILE, check_fresh_run_dir, hold_run_dir, run_paths
from contrastmix.runs import load_state_file
from contrastmix.train.callbacks import OnlineKNN
from contrastmix.train.lifecycle import (
    AtomicCheckpointIO,
    RunLedger,
    SaveOnInterrupt,
    StopOnSignal,
)
from contrastmix.train.loggers import build_loggers

__all__ = ["pretrain", "build_method"]


def build_method(cfg: dict[str, Any], data: DataBundle) -> Method:
    """Instantiate the method named by ``cfg['method']['name']`` (see
    :data:`contrastmix.methods.METHODS`) on ``data``."""
    return get_method(cfg["method"]["name"])(cfg, data)


# Sections a resumed run must share with its checkpoint: they fix the weights' and the queue's
# shapes, what the loss means, the optimiser state (whose restored learning rates would
# silently win over new ones) and the steps per epoch. trainer and eval settings may change
# (e.g. more epochs), and so may the keys in _RESUME_FREE (where the data lives, loader).
_RESUME_FIXED = ("method", "model", "optim", "data")
_RESUME_FREE = ("data.num_workers", "data.eval_batch_size", "data.root", "data.path",
                "data.download")


def _absolute_data_paths(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` whose ``data.root`` / ``data.path`` are absolute, so that the run's
    ``config.yaml`` still finds the data when ``probe`` or ``report`` run from another folder."""
    out = cfg.copy()
    for key in ("root", "path"):
        value = out.data.get(key)
        if value:
            out.data[key] = str(Path(value).expanduser().absolute())
    return out


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
    done = _epochs_done(ckpt)
    if done is not None and done > cfg.trainer.max_epochs:  # Lightning would refuse it deep down
        raise RecipeError(
            f"cannot resume {path}: the run has already trained {done} epochs, more than "
            f"trainer.max_epochs={cfg.trainer.max_epochs}; set trainer.max_epochs >= {done}"
        )


def _epochs_done(ckpt: dict[str, Any]) -> int | None:
    """The epoch a Lightning checkpoint resumes at (``None`` when it does not say)."""
    try:
        done = ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"]
    except (KeyError, TypeError):
        done = ckpt.get("epoch")
    return int(done) if isinstance(done, int) and not isinstance(done, bool) else None


def _merge_metrics(run_dir: Path, segments: list[dict[str, Any]] | None = None
                   ) -> dict[str, float]:
    """Merge the segments' ``logs/version_*/metrics.csv`` into ``metrics.csv`` (atomically).

    ``segments`` (from :class:`~contrastmix.train.lifecycle.RunLedger`) are the kept segments
    in order, each ``{"start_step", "csv_dir"}``: a segment's rows from the step at which the
    next one began are dropped (the next one continued from a checkpoint taken before them),
    and logs of segments that are not listed (killed before any checkpoint) are ignored.
    Without ``segments`` every ``logs/version_*`` is merged (later segments win). A row cut
    short by a kill is skipped.

    Returns:
        The last value of every logged metric, in step order (the summary's ``metrics``).
    """
    if segments and all(seg.get("csv_dir") for seg in segments):
        kept = sorted(segments, key=lambda seg: seg["start_step"])
        parts = [(run_dir / seg["csv_dir"], nxt["start_step"] if nxt else None)
                 for seg, nxt in zip(kept, [*kept[1:], None], strict=True)]
    else:
        versions = sorted((run_dir / "logs").glob("version_*"),
                          key=lambda p: int(p.name.split("_")[-1]))
        parts = [(v, None) for v in versions]
    rows: dict[tuple[str, str, str], dict[str, str]] = {}
    keys: list[str] = []
    for folder, end in parts:
        f = folder / "metrics.csv"
        if not f.is_file():
            continue
        with f.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if None in row or None in row.values():  # a row cut short, or a longer one
                    continue
                try:
                    step = float(row.get("step") or 0)
                except ValueError:
                    continue
                if end is not None and step >= end:
                    continue
                for k in row:
                    if k not in keys:
                        keys.append(k)
                metric_names = ",".join(sorted(k for k, val in row.items() if val != ""))
                rows[(row.get("epoch", ""), row.get("step", ""), metric_names)] = row
    if not rows:
        return {}
    keys = sorted(keys, key=lambda k: (k not in ("epoch", "step"), k))
    ordered = sorted(rows.values(), key=lambda r: (float(r.get("step") or 0)))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(ordered)
    write_text(run_dir / "metrics.csv", buf.getvalue())
    last: dict[str, float] = {}
    for r in ordered:
        for k, val in r.items():
            if k not in ("epoch", "step") and val not in ("", None):
                try:
                    last[k] = float(val)
                except ValueError:
                    pass
    return last


def _limit(value: float) -> float | int | None:
    """``trainer.limit_train_batches``: a fraction in (0, 1), or a number of batches (> 1)."""
    if value == 1.0:
        return None
    return int(value) if value > 1 else float(value)


def _check_steps(cfg: DictConfig, n_samples: int, n_batches: int) -> None:
    """Refuse a run that would train zero steps per epoch (before anything is written)."""
    if n_batches == 0:
        hint = "; set data.drop_last=false or a smaller batch" if cfg.data.drop_last else ""
        raise RecipeError(
            f"data.batch_size={cfg.data.batch_size} is larger than the dataset "
            f"({n_samples} samples): an epoch would train zero steps{hint}"
        )
    limit = _limit(cfg.trainer.limit_train_batches)
    if isinstance(limit, float) and int(n_batches * limit) == 0:
        raise RecipeError(
            f"trainer.limit_train_batches={limit} of {n_batches} batches is zero steps per "
            "epoch; raise it or lower data.batch_size"
        )


class _NoTips(logging.Filter):
    """Drop Lightning's advertising tips and its note on estimating the schedule's length."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "litlogger" not in msg and "estimate number of stepping batches" not in msg


_LIGHTNING_LOGGERS = ("pytorch_lightning.utilities.rank_zero",
                      "lightning.pytorch.utilities.rank_zero")


@contextlib.contextmanager
def _process_state(seed: int, num_threads: int) -> Iterator[None]:
    """Seed, thread count and Lightning's chatter for one run, restored afterwards.

    ``pretrain`` is a library call: the global RNGs (Python, NumPy, torch), torch's thread count,
    the logging filters and the warning filters are as the caller had them once it returns.
    """
    import random
    import warnings

    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    env = {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
    threads = torch.get_num_threads()
    tips = _NoTips()
    loggers = [logging.getLogger(n) for n in _LIGHTNING_LOGGERS]
    for lg in loggers:
        lg.addFilter(tips)
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            if num_threads > 0:
                torch.set_num_threads(num_threads)
            pl.seed_everything(seed, workers=True, verbose=False)
            yield
    finally:
        torch.set_num_threads(threads)
        random.setstate(py_state)
        np.random.set_state(np_state)  # noqa: NPY002
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for lg in loggers:
            lg.removeFilter(tips)


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
    cores = os.cpu_count() or 1
    if on_cpu and isinstance(t.devices, int) and not isinstance(t.devices, bool) \
            and t.devices > cores:
        raise RecipeError(
            f"trainer.devices={t.devices} on CPUs would start one training process per device; "
            f"this machine has {cores} CPU cores"
        )
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

    A library call: the process's global RNG states, torch's thread count and the logging and
    warning filters are restored when it returns (``trainer.num_threads`` and ``seed`` apply
    to the run only).

    Args:
        cfg: A validated recipe (:func:`contrastmix.recipe.load_recipe`).
        out: Run directory (default ``runs/<recipe name>``).
        resume: Continue from ``checkpoints/last.ckpt`` (queue, pointer, optimiser, epoch).
        extra_callbacks: More Lightning callbacks (tests use this to interrupt a run).

    The run owns ``out`` while it runs (a lock the operating system drops if the process
    dies), and every file it writes is renamed into place complete. SIGINT / SIGTERM during
    training stop it at the next batch boundary with ``checkpoints/last.ckpt`` saved (see
    :mod:`contrastmix.train.lifecycle`); the process's signal handlers are restored on return.

    Raises:
        RunDirError: resuming without a checkpoint; a fresh run into a directory that is not
            empty; ``out`` in use by another live run.
        RunInterrupted: SIGINT or SIGTERM stopped the run (its ``step`` is the checkpoint's).
        CheckpointError: resuming a checkpoint of another method.
        RecipeError: trainer settings that cannot work here (``sync_batchnorm`` on CPUs),
            or a value that the data, model, method, optimiser, kNN monitor or Lightning
            rejects when built (e.g. ``trainer.precision=17``).
    """
    _check_trainer(cfg)
    cfg = _absolute_data_paths(cfg)
    run_dir = Path(out if out is not None else Path("runs") / cfg.name)
    paths = run_paths(run_dir)
    owner = _owns_run_dir()
    # one run writes a run directory at a time; the ranks Lightning launches join rank 0's run
    with hold_run_dir(run_dir) if owner else contextlib.nullcontext(run_dir):
        ckpt_path: str | None = None
        if resume:
            if not paths["last"].is_file():
                raise RunDirError(f"cannot resume: no checkpoint at {paths['last']}")
            # the checkpoint's own recipe: its method, and the sections that must not change
            _check_checkpoint(paths["last"], cfg)
            ckpt_path = str(paths["last"])
        elif owner:
            check_fresh_run_dir(run_dir)  # never inherit another run's files
        with _process_state(cfg.seed, cfg.trainer.num_threads):
            return _fit(cfg, run_dir, ckpt_path, extra_callbacks or [], owner)


def _owns_run_dir() -> bool:
    """This process is the one a run was started in, not a rank that Lightning (or torchrun)
    launched for it: only that one locks and checks the run directory."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _empty_run_dir(run_dir: Path) -> None:
    """Remove what a fresh run wrote before training began (the directory was empty when it
    started, and is still locked by it): the run can then simply be started again."""
    for p in run_dir.iterdir():
        if p.name == LOCK_FILE:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _checkpoint_step(path: Path) -> int | None:
    """The global step of the checkpoint at ``path``, or ``None`` if there is none."""
    if not path.is_file():
        return None
    try:
        return int(load_state_file(path, mmap=True).get("global_step", 0))
    except ContrastmixError:
        return None


def _fit(cfg: DictConfig, run_dir: Path, ckpt_path: str | None,
         extra_callbacks: list[pl.Callback], owner: bool = True) -> Path:
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

    paths = run_paths(run_dir)
    is_rank0 = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0
    with _recipe_values("data"):
        data = build_data(cfg.data)
        loader = DataLoader(
            data.pretrain, batch_size=cfg.data.batch_size, shuffle=True,
            num_workers=cfg.data.num_workers, drop_last=cfg.data.drop_last,
            collate_fn=data.collate_fn, persistent_workers=cfg.data.num_workers > 0,
        )
    _check_steps(cfg, len(data.pretrain), len(loader))
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    with _recipe_values("method and model"):
        module = build_method(plain, data)  # type: ignore[arg-type]

    # StopOnSignal before SaveOnInterrupt: a stop at a batch's start comes before that batch
    stop, saver, ledger = StopOnSignal(), SaveOnInterrupt(str(paths["last"])), RunLedger(run_dir)
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(
            dirpath=paths["ckpt_dir"], filename="last", save_top_k=1, monitor=None,
            enable_version_counter=False, every_n_epochs=cfg.trainer.checkpoint_every_n_epochs,
        ),
        stop, saver, ledger,
        LearningRateMonitor(logging_interval="epoch"),
    ]
    # num_classes 0: unlabelled classification data (e.g. `arrays` without `y`), no kNN monitor
    labelled = data.task == "classification" and data.num_classes > 0
    if labelled and cfg.eval.knn_every_n_epochs > 0:
        with _recipe_values("eval"):
            callbacks.append(
                OnlineKNN(
                    data.train, data.test, k=cfg.eval.knn_k,
                    temperature=cfg.eval.knn_temperature, every=cfg.eval.knn_every_n_epochs,
                    batch_size=cfg.data.eval_batch_size, collate_fn=None,
                )
            )
    callbacks += extra_callbacks
    t = cfg.trainer
    with _recipe_values("trainer"):
        trainer = pl.Trainer(
            max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices,
            num_nodes=t.num_nodes, strategy=t.strategy, precision=t.precision,
            log_every_n_steps=t.log_every_n_steps, deterministic=t.deterministic,
            # "auto": Lightning's bar writes to stdout; shown when that is a terminal
            enable_progress_bar=progress_enabled(t.enable_progress_bar, sys.stdout),
            limit_train_batches=_limit(t.limit_train_batches),
            gradient_clip_val=t.gradient_clip_val, sync_batchnorm=t.sync_batchnorm,
            callbacks=callbacks,
            logger=build_loggers(t.loggers, run_dir, cfg.name),
            enable_model_summary=False, default_root_dir=str(run_dir),
            plugins=[AtomicCheckpointIO()],
        )
    # only a recipe that built is written down
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_rank0:
        write_text(paths["config"], OmegaConf.to_yaml(cfg, resolve=True))
    try:
        # SIGINT / SIGTERM stop training at the end of a batch (and wait for run.json after it)
        with stop:
            try:
                trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path,
                            weights_only=True)
            except BaseException:
                if stop.signum is None:
                    raise
                step = saver.saved_step if saver.saved_step is not None else \
                    _checkpoint_step(paths["last"])
                raise RunInterrupted(stop.signum, str(run_dir), step) from None
            if trainer.is_global_zero:
                module.export(run_dir)
                logged = _merge_metrics(run_dir, ledger.segments)
                last = {k: float(v) for k, v in trainer.callback_metrics.items()
                        if v.numel() == 1}
                summary = {
                    "method": cfg.method.name, "epochs": trainer.current_epoch,
                    "global_step": trainer.global_step,
                    # training time of every kept segment (see RunLedger)
                    "wall_time_s": round(ledger.wall_time_s(), 2),
                    "resumed": ckpt_path is not None, "segments": len(ledger.segments),
                    "metrics": {**logged, **last},
                }
                write_json(paths["summary"], summary)
    except BaseException as e:
        # a fresh run that failed before training, or was stopped before any checkpoint: it
        # has nothing to resume, so its directory is left empty and the run can start again
        if (ckpt_path is None and owner and run_dir.is_dir() and not paths["last"].is_file()
                and (not saver.started or stop.signum is not None)):
            _empty_run_dir(run_dir)
        if isinstance(e, RunInterrupted):
            raise
        if stop.signum is not None and isinstance(e, KeyboardInterrupt):
            # Ctrl-C twice while the run directory was being written
            raise RunInterrupted(stop.signum, str(run_dir), _checkpoint_step(paths["last"])
                                 ) from None
        raise
    if stop.signum is not None:  # the signal came after the last step: nothing was cut short
        raise RunInterrupted(stop.signum, str(run_dir), trainer.global_step, finished=True)
    return run_dir
