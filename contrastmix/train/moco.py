"""Lightning module for MoCo v2 and MoCHi pretraining (METHODS §1).

The maths lives in the core (:mod:`contrastmix.losses`, :mod:`contrastmix.banks`); this module
only wires the encoders, the momentum update, the queue and the logging together.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch.nn.functional as F
from torch import Tensor, nn

from contrastmix._validation import check_positive
from contrastmix.banks import MemoryBank
from contrastmix.losses.fused_infonce import fused_infonce, proxy_accuracy, row_max
from contrastmix.losses.moco import moco_parts
from contrastmix.models.build import build_backbone, build_projector
from contrastmix.models.momentum import MomentumEncoder
from contrastmix.train.optim import build_optimizer

__all__ = ["MoCoModule"]


class MoCoModule(pl.LightningModule):
    """MoCo v2 (``method.name: moco``) and MoCHi (``method.name: mochi``).

    Args:
        cfg: The recipe as a plain dict (``OmegaConf.to_container``); saved as hyper-parameters
            so a checkpoint names its method.
        in_channels: Input channels of the data.
        batch_augment: On-device two-view augmentation for raw tensor batches, or ``None`` when
            the loader yields ``[view1, view2]``.
        steps_per_epoch: Optimiser steps per epoch (for the schedules).
    """

    def __init__(
        self,
        cfg: dict[str, Any],
        in_channels: int,
        batch_augment: Any = None,
        steps_per_epoch: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters({"cfg": cfg, "in_channels": in_channels,
                                   "steps_per_epoch": steps_per_epoch})
        self.cfg = cfg
        m, mc = cfg["method"], cfg["model"]
        self.method_name = m["name"]
        self.backbone = build_backbone(
            mc["backbone"], in_channels=in_channels, width=mc["width"],
            cifar_stem=mc["cifar_stem"],
        )
        self.projector = build_projector(
            self.backbone.output_dim, mc["proj_hidden_dim"], mc["proj_output_dim"],
            batch_norm=mc["proj_batch_norm"],
        )
        self.key_encoder = MomentumEncoder(
            nn.Sequential(self.backbone, self.projector), m["momentum"], m["end_momentum"]
        )
        check_positive("method.queue_size", m["queue_size"])
        check_positive("method.temperature", m["temperature"])
        self.queue = MemoryBank(m["queue_size"], mc["proj_output_dim"], backend=m["bank_backend"])
        self.batch_augment = batch_augment
        self.steps_per_epoch = steps_per_epoch
        self.temperature = float(m["temperature"])
        self.mochi: nn.Module | None = None
        if self.method_name == "mochi":
            from contrastmix.losses.mochi import MoCHiLoss

            check_positive("method.warmup_epochs", m["warmup_epochs"], allow_zero=True)

            self.mochi = MoCHiLoss(
                temperature=self.temperature, num_hard=m["num_hard"], num_mix=m["num_mix"],
                num_query_mix=m["num_query_mix"],
                mask_same_instance=m["exclude_same_instance"],
            )

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        """Backbone features ``[B, output_dim]`` (what probes and kNN use)."""
        return self.backbone(x)

    def _views(self, x: Any) -> tuple[Tensor, Tensor]:
        if isinstance(x, (list, tuple)):
            return x[0], x[1]
        if self.batch_augment is None:
            raise ValueError("the loader yields raw tensors but no batch augmentation is set")
        return self.batch_augment(x), self.batch_augment(x)

    def _loss(self, q: Tensor, k: Tensor, idx: Tensor, mixing: bool) -> tuple[Tensor, float]:
        # A snapshot: the bank is updated in place after the loss, before backward runs.
        queue = self.queue.features.clone()
        if self.mochi is not None:
            loss = self.mochi(
                q, k, queue, queue_ids=self.queue.indices, query_ids=idx, mix=mixing
            )
            return loss, float(self.mochi.last_proxy_accuracy)
        ids = (
            {"queue_ids": self.queue.indices, "query_ids": idx}
            if self.cfg["method"]["exclude_same_instance"] else {}
        )
        # one pass over the logits for the loss and the proxy task (= moco_infonce(...))
        pos, neg = moco_parts(q, k, queue, self.temperature, **ids)
        neg_max = row_max(neg)
        loss = fused_infonce(pos, neg, neg_max)
        proxy = float(proxy_accuracy(pos, neg_max))
        return loss, proxy

    def contrastive_step(
        self, x: Any, y: Tensor, idx: Tensor, *, step: int, total_steps: int, epoch: int
    ) -> tuple[Tensor, float]:
        """One MoCo/MoCHi step without Lightning: views, EMA update, loss, enqueue.

        Returns:
            The loss (with graph) and the proxy-task accuracy (share of queries whose key
            beats every real negative).
        """
        x1, x2 = self._views(x)
        self.key_encoder.update(
            nn.Sequential(self.backbone, self.projector),
            self.key_encoder.current_momentum(step, total_steps),
        )
        mixing = self.mochi is not None and epoch >= self.cfg["method"]["warmup_epochs"]
        q = F.normalize(self.projector(self.backbone(x1)), dim=1)
        k = F.normalize(self.key_encoder(x2), dim=1)
        loss, proxy = self._loss(q, k, idx, mixing)
        if self.cfg["method"].get("symmetric", False):
            q2 = F.normalize(self.projector(self.backbone(x2)), dim=1)
            k2 = F.normalize(self.key_encoder(x1), dim=1)
            loss2, _ = self._loss(q2, k2, idx, mixing)
            loss = 0.5 * (loss + loss2)
        self.queue.add(k.detach().float(), labels=y, indices=idx)
        return loss, proxy

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, idx = batch
        total = self.steps_per_epoch * max(1, self.trainer.max_epochs or 1)
        loss, proxy = self.contrastive_step(
            x, y, idx, step=self.global_step, total_steps=total, epoch=self.current_epoch
        )
        bs = y.shape[0]
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bs)
        self.log("proxy_acc", proxy, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def configure_optimizers(self) -> Any:
        return build_optimizer(
            _Obj(self.cfg["optim"]), [self.backbone, self.projector], self.steps_per_epoch,
            self.trainer.max_epochs or 1,
        )


class _Obj:
    """Attribute access to a plain dict (for the optimiser builder)."""

    def __init__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)
