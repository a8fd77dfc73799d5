"""Lightning callbacks: the online kNN monitor (docs/methods.md §9)."""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from contrastmix.eval.knn import knn_predict
from contrastmix.eval.probe import extract_features

__all__ = ["OnlineKNN"]


class OnlineKNN(pl.Callback):
    """Log ``knn_acc``: weighted kNN (k, τ) on frozen backbone features every ``every`` epochs.

    Features of the labelled train split (the bank) and of the test split are extracted with the
    backbone in eval mode (BN statistics untouched) using test-time inputs; the module's
    train/eval mode is restored afterwards. Every rank computes the same number.

    Args:
        train: Labelled bank dataset yielding ``(x, y, idx)``.
        test: Test dataset yielding ``(x, y, idx)``.
        k: Neighbours (clamped to the bank size).
        temperature: τ of the ``exp(s/τ)`` weights.
        every: Run every this many epochs (and always after the last one).
        batch_size: Extraction batch size.
    """

    def __init__(
        self, train: Dataset, test: Dataset, k: int = 200, temperature: float = 0.1,
        every: int = 1, batch_size: int = 1024, collate_fn: Any = None,
    ) -> None:
        self.train, self.test = train, test
        self.k, self.temperature, self.every = k, temperature, max(1, every)
        self.batch_size = batch_size
        self.collate_fn = collate_fn

    def _loader(self, ds: Dataset) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False,
                          collate_fn=self.collate_fn)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if epoch % self.every and not last:
            return

        backbone = pl_module.backbone  # type: ignore[attr-defined]
        xtr, ytr = extract_features(backbone, self._loader(self.train), pl_module.device)
        xte, yte = extract_features(backbone, self._loader(self.test), pl_module.device)
        pred = knn_predict(xtr, ytr, xte, k=self.k, temperature=self.temperature)
        acc = (pred.cpu() == yte.cpu()).float().mean().item()
        pl_module.log("knn_acc", acc, on_step=False, on_epoch=True, sync_dist=False)


class SaveOnInterrupt(pl.Callback):
    """Write ``last.ckpt`` when training stops on an exception (Ctrl-C, a crash, a kill).

    Lightning's ``OnExceptionCheckpoint`` deletes its file in ``teardown``, so it cannot share
    the name ``last.ckpt`` with the epoch checkpoint; this one keeps it, so ``--resume`` continues
    from the exact step where the run stopped (queue and pointer included).

    Only once training has started (``on_train_start``, after a resumed run's checkpoint is
    fully restored): an exception before that, e.g. while a checkpoint is being restored,
    must not replace the run's checkpoint with an untrained model. The file is written next
    to ``last.ckpt`` and then renamed over it, so a crash while saving leaves the old one.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.started = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = True

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not self.started:
            return
        tmp = self.path + ".tmp"
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero and os.path.exists(tmp):
            os.replace(tmp, self.path)
        for logger in trainer.loggers:  # flush buffered metric rows of the lost segment too
            logger.save()
