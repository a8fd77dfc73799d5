"""MoCo v2: momentum contrast with a queue of negatives (docs/methods.md §1).

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020;
Chen et al., "Improved Baselines with Momentum Contrastive Learning", arXiv:2003.04297.

A query ``q = normalize(projector(backbone(view1)))`` is pulled towards the key of the other
view, ``k = normalize(key_encoder(view2))`` (an exponential moving average of backbone +
projector), and pushed from the queue of earlier keys: InfoNCE over ``[q·k, q·n_1 .. q·n_K] / τ``
with target 0 (:func:`contrastmix.losses.moco.moco_parts`,
:func:`contrastmix.losses.fused_infonce.fused_infonce`). The queue is a
:class:`~contrastmix.banks.MemoryBank` ring buffer of any batch size, filled with the keys of
all ranks and saved in the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from contrastmix._atomic import torch_save
from contrastmix._numerics import unit_rows
from contrastmix.banks import BACKENDS, MemoryBank
from contrastmix.data.registry import DataBundle
from contrastmix.distributed import shuffled_forward
from contrastmix.losses.fused_infonce import fused_infonce, proxy_accuracy, row_max
from contrastmix.losses.moco import moco_parts
from contrastmix.methods.base import Method, MethodConfig, require, save_state
from contrastmix.models.momentum import MomentumEncoder
from contrastmix.rundir import RunArtifacts

__all__ = ["MoCoConfig", "MoCo"]


@dataclass
class MoCoConfig(MethodConfig):
    """MoCo v2 settings (the recipe's ``method`` section).

    Attributes:
        temperature: τ of the InfoNCE logits (0.2 in MoCo v2).
        queue_size: ``K``, negatives kept in the queue.
        momentum: EMA momentum ``m`` of the key encoder (0.99 for small data, 0.999 on
            ImageNet).
        end_momentum: Cosine ramp of the momentum to this value over the run (``None``: fixed).
        bank_backend: :class:`~contrastmix.banks.MemoryBank` search backend.
        symmetric: Also use ``view2`` as query and ``view1`` as key; the loss is the mean.
        exclude_same_instance: Queue rows holding the query's own sample (an older key of the
            same input) are left out of its negatives. Matters when the queue is close to the
            dataset size.
        shuffle_bn: Shuffle-BN (MoCo v1/v2): under DDP the key encoder encodes a random part
            of the global batch on each rank, so a query and its key never share BatchNorm
            statistics (:func:`contrastmix.distributed.shuffled_forward`; the permutation
            comes from the seeded ``shuffle_bn`` generator, broadcast from rank 0). On one
            device it changes nothing (shuffling one batch leaves its statistics as they are).
    """

    name: str = "moco"
    temperature: float = 0.2
    queue_size: int = 4096
    momentum: float = 0.99
    end_momentum: float | None = None
    bank_backend: str = "torch"
    symmetric: bool = False
    exclude_same_instance: bool = True
    shuffle_bn: bool = False

    def check(self) -> None:
        require(self.temperature > 0, "temperature", self.temperature, "> 0")
        require(self.queue_size >= 1, "queue_size", self.queue_size, ">= 1")
        require(0 <= self.momentum <= 1, "momentum", self.momentum, "in [0, 1]")
        require(self.end_momentum is None or 0 <= self.end_momentum <= 1, "end_momentum",
                self.end_momentum, "in [0, 1] or null")
        require(self.bank_backend in BACKENDS, "bank_backend", self.bank_backend,
                "one of " + ", ".join(BACKENDS))


class MoCo(Method):
    """MoCo v2 pretraining.

    Logs ``train_loss`` and ``proxy_acc`` (share of queries whose key beats every negative).
    Leaves the projector, the key encoder and the final queue for evaluation
    (``projector.pt``, ``key_encoder.pt``, ``queue.pt``).

    Shapes:
        ``training_step((x [B, ...] or [view1, view2], y [B], idx [B]))``; queries, keys and
        queue rows are ``[*, model.proj_output_dim]``.
    """

    name = "moco"
    Config = MoCoConfig
    tasks = ("classification", "regression")
    uses_projector = True

    def __init__(self, cfg: dict[str, Any], data: DataBundle) -> None:
        super().__init__(cfg, data)
        c = self.config
        assert self.projector is not None
        self.key_encoder = MomentumEncoder(
            nn.Sequential(self.backbone, self.projector), c.momentum, c.end_momentum
        )
        self.queue = MemoryBank(c.queue_size, cfg["model"]["proj_output_dim"],
                                backend=c.bank_backend)

    # ------------------------------------------------------------------ the loss
    def keys(self, x: Tensor) -> Tensor:
        """Key-encoder outputs ``[B, d]`` of a view (no gradient; Shuffle-BN when set)."""
        if self.config.shuffle_bn:
            # a CPU generator shared by all ranks (rank 0's permutation is broadcast anyway)
            return shuffled_forward(self.key_encoder, x,
                                    self.generator("shuffle_bn", "cpu", per_rank=False))
        return self.key_encoder(x)

    def queue_snapshot(self) -> Tensor:
        """The filled queue rows ``[K', d]`` (a copy: the bank changes before backward)."""
        return self.queue.features.clone()

    def loss_and_proxy(self, q: Tensor, k: Tensor, idx: Tensor, epoch: int, y: Tensor
                       ) -> tuple[Tensor, Tensor]:
        """InfoNCE of queries ``q [B, d]`` against keys ``k [B, d]`` and the queue, and the
        proxy-task accuracy (a 0-d tensor: no host synchronisation). ``idx [B]`` are the
        samples' ids, ``y [B]`` their labels (unused by MoCo)."""
        ids = ({"queue_ids": self.queue.indices, "query_ids": idx}
               if self.config.exclude_same_instance else {})
        pos, neg = moco_parts(q, k, self.queue_snapshot(), self.config.temperature, **ids)
        neg_max = row_max(neg)
        return fused_infonce(pos, neg, neg_max), proxy_accuracy(pos, neg_max)

    def contrastive_step(
        self, x: Any, y: Tensor, idx: Tensor, *, step: int, total_steps: int, epoch: int
    ) -> tuple[Tensor, Tensor]:
        """One step without Lightning: views, EMA update, loss, enqueue.

        Returns:
            The loss (with graph) and the proxy-task accuracy (0-d tensor).
        """
        x1, x2 = self.views(x)
        online = nn.Sequential(self.backbone, self.projector)
        self.key_encoder.update(online, self.key_encoder.current_momentum(step, total_steps))
        q, k = _unit(online(x1)), _unit(self.keys(x2))
        loss, proxy = self.loss_and_proxy(q, k, idx, epoch, y)
        if self.config.symmetric:
            loss2, _ = self.loss_and_proxy(_unit(online(x2)), _unit(self.keys(x1)), idx, epoch,
                                           y)
            loss = 0.5 * (loss + loss2)
        self.queue.add(k.detach().float(), labels=y, indices=idx)
        return loss, proxy

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, idx = batch
        loss, proxy = self.contrastive_step(
            x, y, idx, step=self.global_step, total_steps=self.total_steps(),
            epoch=self.current_epoch,
        )
        bs = y.shape[0]
        self.log_train_loss(loss, bs)
        self.log("proxy_acc", proxy, on_step=False, on_epoch=True, sync_dist=True, batch_size=bs)
        return loss

    # ------------------------------------------------------------------ export
    def export_artifacts(self, run_dir: Path) -> RunArtifacts:
        art = super().export_artifacts(run_dir)
        save_state(self.key_encoder.module, run_dir / "key_encoder.pt")
        torch_save({"features": self.queue.features.detach().float().cpu().contiguous()},
                   run_dir / "queue.pt")
        art.key_encoder, art.queue = "key_encoder.pt", "queue.pt"
        art.expected_metrics = ["proxy_acc"]
        return art


def _unit(z: Tensor) -> Tensor:
    """L2-normalised embeddings in fp32 (or wider): under mixed precision the encoders give
    bf16 / fp16 outputs, whose normalisation would be unit only to ~4e-3; the loss maths and the
    fp32 queue get rows normalised in fp32."""
    return unit_rows(z.float() if z.dtype in (torch.float16, torch.bfloat16) else z, dim=1)
