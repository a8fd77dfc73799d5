"""Lightning callbacks: the online kNN monitor (docs/methods.md §9)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from contrastmix import distributed as dist
from contrastmix.eval.knn import knn_predict
from contrastmix.eval.probe import extract_features

__all__ = ["OnlineKNN"]


class OnlineKNN(pl.Callback):
    """Log ``knn_acc``: weighted kNN (k, τ) on frozen backbone features every ``every`` epochs.

    Features of the labelled train split (the bank) and of the test split are extracted with the
    backbone in eval mode (BN statistics untouched) using test-time inputs; the module's
    train/eval mode is restored afterwards. Under DDP each rank extracts only its shard
    (samples ``rank, rank + world, ...``); the shards are gathered and put back in dataset order,
    so every rank computes the same number, equal to the single-process one.

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

    def features(self, ds: Dataset, pl_module: pl.LightningModule) -> tuple[Tensor, Tensor]:
        """Backbone features and labels of all of ``ds``, in dataset order, on every rank.

        Each rank runs the backbone over samples ``rank, rank + world, ...`` only (no padding,
        no duplicates) with rank 0's BatchNorm statistics (each rank's own differ: DDP only
        broadcasts them at the next forward); the shards are gathered without gradient and
        reordered by index.

        Args:
            ds: Dataset yielding ``(x, y, ...)``, ``N`` samples.
            pl_module: The training module (its ``backbone`` and device).

        Returns:
            ``features [N, D]`` and ``labels [N]`` on the CPU, identical on every rank.
        """
        backbone = pl_module.backbone  # type: ignore[attr-defined]
        world, rank, n = dist.world_size(), dist.rank(), len(ds)  # type: ignore[arg-type]
        if world == 1 or n < world:  # (a rank with no samples cannot run the backbone)
            return extract_features(backbone, self._loader(ds), pl_module.device)
        dist.broadcast_buffers(backbone, 0)
        order = torch.arange(rank, n, world)
        x, y = extract_features(backbone, self._loader(Subset(ds, order.tolist())),
                                pl_module.device)
        # all_gather needs tensors on the process group's device (CUDA under NCCL)
        dev = pl_module.device
        pos = dist.gather_no_grad(order.to(dev)).cpu()
        x = dist.gather_no_grad(x.to(dev)).cpu()
        y = dist.gather_no_grad(y.to(dev)).cpu()
        inv = torch.empty_like(pos)
        inv[pos] = torch.arange(n)
        return x[inv], y[inv]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if epoch % self.every and not last:
            return

        xtr, ytr = self.features(self.train, pl_module)
        xte, yte = self.features(self.test, pl_module)
        pred = knn_predict(xtr, ytr, xte, k=self.k, temperature=self.temperature)
        acc = (pred.cpu() == yte.cpu()).float().mean().item()
        pl_module.log("knn_acc", acc, on_step=False, on_epoch=True, sync_dist=False)

