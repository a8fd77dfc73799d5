"""Shared machinery of two-view contrastive pretraining on regression labels (docs/methods.md §2).

Not a method: the base class of the methods whose loss takes the projections of two views
``[B, 2, d]`` and one label per sample. Per step it draws two views of the batch, encodes them
with backbone + projector (the backbone alone when the method builds no projector, e.g.
``method.projector: false``), optionally L2-normalises the projections, gathers projections (with
gradient) and labels of every DDP rank so the loss sees the global batch, and logs the loss and
the cosine between each sample's two views. A subclass says which loss and which labels:
:meth:`ContrastiveRegression.make_loss`, :meth:`ContrastiveRegression.loss_labels`,
:meth:`ContrastiveRegression.compute_loss` and :attr:`ContrastiveRegression.normalize`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from contrastmix._numerics import unit_rows
from contrastmix.data.registry import DataBundle
from contrastmix.distributed import gather_no_grad, gather_with_grad, is_distributed, world_size
from contrastmix.methods.base import Method

__all__ = ["ContrastiveRegression"]


class ContrastiveRegression(Method):
    """Two-view contrastive pretraining for regression (a base class; subclasses set the loss).

    Logs ``train_loss`` and ``view_cosine`` (mean cosine between the two views' projections,
    monitoring only). The projector, if any, is left for evaluation (``projector.pt``).

    Attributes:
        loss_fn: The loss module built by :meth:`make_loss`.
        normalize: L2-normalise the projections before the loss (a subclass may set it from
            its config).

    Shapes:
        ``training_step((x [B, ...] or [view1, view2], y [B], idx [B]))``; the loss sees
        ``feats [B * world_size, 2, d]`` (``d = model.proj_output_dim``, or the backbone's
        ``output_dim`` without a projector) and
        ``labels [B * world_size]``.
    """

    tasks = ("regression",)
    uses_projector = True
    normalize: bool = True

    def __init__(self, cfg: dict[str, Any], data: DataBundle) -> None:
        super().__init__(cfg, data)
        self.loss_fn = self.make_loss()

    # ------------------------------------------------------------------ hooks
    def make_loss(self) -> nn.Module:
        """The loss module, from ``self.config`` (called once at the end of ``__init__``)."""
        raise NotImplementedError

    def loss_labels(self, y: Tensor) -> Tensor:
        """The labels ``[B]`` the loss sees for the batch labels ``y [B]`` (default: ``y``
        as float)."""
        return y.float()

    def compute_loss(self, feats: Tensor, labels: Tensor) -> Tensor:
        """The loss of ``feats [N, 2, d]`` (all ranks) with ``labels [N]`` (a 0-d tensor)."""
        return self.loss_fn(feats, labels)

    # ------------------------------------------------------------------ the step
    def project_views(self, x: Any) -> Tensor:
        """Projections ``[B, 2, d]`` (float32; normalised when :attr:`normalize`) of the two
        views of a batch: ``projector(backbone(x))``, or the backbone features ``backbone(x)``
        (``d = backbone.output_dim``) when the method has no projector."""
        x1, x2 = self.views(x)
        b = x1.shape[0]
        h = self.backbone(torch.cat([x1, x2], dim=0))
        z = (h if self.projector is None else self.projector(h)).float()
        if self.normalize:
            z = unit_rows(z, dim=1)
        return torch.stack([z[:b], z[b:]], dim=1)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, _ = batch
        feats = self.project_views(x)
        b = feats.shape[0]
        with torch.no_grad():  # alignment of the two views (monitoring only)
            zn = unit_rows(feats.detach(), dim=2)
            align = (zn[:, 0] * zn[:, 1]).sum(dim=1).mean()
        labels = self.loss_labels(y)
        if is_distributed():
            feats = gather_with_grad(feats)
            # gather_with_grad needs the same batch size on every rank, so the label counts are
            # known: no size exchange (a host read every step)
            labels = gather_no_grad(labels, [labels.shape[0]] * world_size())
        loss = self.compute_loss(feats, labels)
        self.log_train_loss(loss, b)
        self.log("view_cosine", align, on_step=False, on_epoch=True, sync_dist=True, batch_size=b)
        return loss
