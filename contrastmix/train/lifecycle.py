"""A run that never loses work: atomic checkpoints, signals, the checkpoint on interrupt, and the
ledger that makes a resumed run's summary cover all of it.

* :class:`AtomicCheckpointIO` writes every Lightning checkpoint beside its target and renames it
  into place (Lightning's own writer stages it under ``$TMPDIR`` and moves it, which across
  filesystems truncates ``last.ckpt`` first).
* :class:`StopOnSignal` turns SIGINT / SIGTERM during training into a stop at the end of the
  batch in flight (its optimiser step, queue update and scheduler step all happen), after
  which :class:`SaveOnInterrupt` writes ``last.ckpt``.
* :class:`RunLedger` keeps, inside the checkpoint, the training time and the step at which each
  segment (a start or a resume) began, so the summary and ``metrics.csv`` of a resumed run
  describe the whole run and never a timeline that was thrown away.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from contrastmix._atomic import torch_save

__all__ = ["AtomicCheckpointIO", "StopOnSignal", "SaveOnInterrupt", "RunLedger", "StopRequested"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing beside the target and renaming into place.

    At every instant ``last.ckpt`` is the previous complete checkpoint or the new complete one:
    a kill, a full disk or an exception in ``torch.save`` leaves the previous file.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        torch_save(checkpoint, target)


class StopRequested(Exception):
    """Raised inside training at a batch boundary after SIGINT / SIGTERM."""


class _NoSigtermNote(logging.Filter):
    """Drop Lightning's ``Received SIGTERM`` note: the CLI says what happened in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Received SIGTERM" not in record.getMessage()


_SIGNAL_LOGGERS = ("pytorch_lightning.trainer.connectors.signal_connector",
                   "lightning.pytorch.trainer.connectors.signal_connector")


class StopOnSignal(pl.Callback):
    """Stop training at the end of the batch in flight on SIGINT or SIGTERM.

    Use as a context manager around ``trainer.fit`` *and* as one of its callbacks. Inside the
    ``with`` block the process's SIGINT and SIGTERM handlers only record the signal; the previous
    handlers (and logging filters) are back when the block ends: a library call leaves
    process-wide state as it found it.

    Lightning's way of stopping is used for both signals. During ``fit`` Lightning chains its
    own SIGTERM handler in front of this one; it raises ``SIGTERMException`` once the batch in
    flight has finished everything (optimiser step, queue update, scheduler step, logging,
    progress counters), the state from which its loops restart exactly. SIGINT is passed on to
    that handler, so Ctrl-C stops at the same point (and, under DDP, Lightning passes the
    stop to the other ranks). A signal that comes while the trainer sets up stops training at
    ``on_train_start``, before any step; ``on_train_batch_start`` stops it in case Lightning's
    handler is not there (then the restored run logs its steps one higher).

    A second Ctrl-C stops at once (``KeyboardInterrupt``); the batch in flight is then lost and
    :class:`SaveOnInterrupt` keeps the previous checkpoint rather than write a half-done step.
    Outside the main thread no handler can be installed and nothing changes.

    Attributes:
        signum: The first signal received, or ``None``.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._filter = _NoSigtermNote()

    # ------------------------------------------------------------------ handlers
    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.getsignal(s)
                signal.signal(s, self._handle)
            for name in _SIGNAL_LOGGERS:
                logging.getLogger(name).addFilter(self._filter)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            # None: a handler not installed from Python; the default is the closest we can do
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        if self._previous:
            for name in _SIGNAL_LOGGERS:
                logging.getLogger(name).removeFilter(self._filter)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT == self.signum:
                raise KeyboardInterrupt  # Ctrl-C twice: stop now
            return
        self.signum = signum
        if signum == signal.SIGINT:
            # ask Lightning to stop as it does on SIGTERM: its handler (which calls this one
            # in turn, with SIGTERM, then ignored) is installed while fit runs
            lightning = signal.getsignal(signal.SIGTERM)
            if callable(lightning) and lightning != self._handle:
                lightning(signal.SIGTERM, frame)

    # ------------------------------------------------------------------ stop points
    def _stop_if_asked(self) -> None:
        if self.signum is not None:
            raise StopRequested(signal.Signals(self.signum).name)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_if_asked()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self._stop_if_asked()


class SaveOnInterrupt(pl.Callback):
    """Write ``last.ckpt`` when training stops on an exception between batches.

    An exception between two batches (a signal turned into :class:`StopRequested`, Lightning's
    ``SIGTERMException``, a failing epoch-end hook, a dead data-loader worker) leaves a
    consistent state, which is saved so that ``--resume`` continues from that exact step
    (queue, pointer, optimiser, scheduler and loop counters agree). An exception *inside* a
    batch (in ``training_step``, backward or the optimiser step; a second Ctrl-C) may leave the
    queue updated but the step not taken: nothing is written then, and the run resumes from its
    previous checkpoint.

    Nothing is written either before training starts (``on_train_start``, after a resumed run's
    checkpoint is fully restored): it would replace the run's checkpoint with an untrained
    model. Lightning's ``OnExceptionCheckpoint`` deletes its file in ``teardown``, so it cannot
    share the name ``last.ckpt`` with the epoch checkpoint.

    Attributes:
        started: Training began (the first batch may not have).
        saved_step: Global step of the checkpoint written on the exception, or ``None``.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.started = False
        self.in_batch = False
        self.saved_step: int | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = True

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self.in_batch = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self.in_batch = False

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not self.started or self.in_batch:
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # atomic (AtomicCheckpointIO)
        self.saved_step = trainer.global_step
        for logger in trainer.loggers:  # flush buffered metric rows of the stopped segment too
            logger.save()


class RunLedger(pl.Callback):
    """The run's history, saved in every checkpoint and restored on resume.

    Keeps the training time of the segments before this one (each counted up to the checkpoint
    the next one continued from) and, per segment, the global step it started at and the folder
    of its CSV log. A segment killed after its last checkpoint contributes its time and rows up
    to that checkpoint only: what came after was not kept.

    Args:
        run_dir: The run directory (log folders are stored relative to it).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.previous_s = 0.0
        self.segments: list[dict[str, Any]] = []
        self._t0: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from pytorch_lightning.loggers import CSVLogger

        self._t0 = time.monotonic()
        csv = [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)]
        log_dir = os.path.relpath(csv[0].log_dir, self.run_dir) if csv else None
        self.segments.append({"start_step": int(trainer.global_step), "csv_dir": log_dir})

    def wall_time_s(self) -> float:
        """Training time of the whole run so far (all kept segments), in seconds."""
        now = 0.0 if self._t0 is None else time.monotonic() - self._t0
        return self.previous_s + now

    def state_dict(self) -> dict[str, Any]:
        return {"wall_time_s": self.wall_time_s(), "segments": list(self.segments)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous_s = float(state_dict.get("wall_time_s", 0.0))
        self.segments = list(state_dict.get("segments", []))
