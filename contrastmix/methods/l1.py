"""Supervised L1 regression from scratch, optionally with C-Mixup (docs/methods.md §2, §3).

The supervised baseline of the regression recipes: ``backbone -> Linear(output_dim, 1)``
trained with the L1 loss on standardised targets; evaluation probes the backbone like any
pretrained one.

C-Mixup (Yao et al., "C-Mixup: Improving Generalization in Regression", NeurIPS 2022), with
``cmixup: true``: each sample ``i`` is mixed with a partner ``j`` drawn with probability
``softmax_j(-|y_i - y_j|^2 / (2 sigma^2))`` from the training set (or from the batch),
``x_mix = lam x_i + (1 - lam) x_j``, ``y_mix = lam y_i + (1 - lam) y_j``,
``lam ~ Beta(alpha, alpha)`` (:mod:`contrastmix.mixing.cmixup`,
:func:`contrastmix.mixing.beta.sample_lambda`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastmix.data.labels import dataset_labels
from contrastmix.data.registry import DataBundle
from contrastmix.methods.base import Method, MethodConfig, require, save_state
from contrastmix.mixing.beta import sample_lambda
from contrastmix.mixing.cmixup import CMixupSampler, cmixup_partners
from contrastmix.rundir import RunArtifacts

__all__ = ["L1Config", "L1Regression"]

CMIXUP_SCOPES = ("dataset", "batch")


@dataclass
class L1Config(MethodConfig):
    """L1 regression settings (the recipe's ``method`` section).

    ``cmixup_sigma`` is in the units of the dataset's targets.

    Attributes:
        augment: Apply the dataset's view augmentation (once) to training inputs.
        standardize_target: Regress ``(y - mean) / std`` of the training labels (the head
            predicts in label units after un-standardising; the L1 loss is in standard units).
        cmixup: Mix inputs and labels with C-Mixup partners.
        cmixup_sigma: Bandwidth of the label kernel, in label units.
        mixup_alpha: ``lam ~ Beta(alpha, alpha)``.
        mixup_per_sample: One ``lam`` per sample instead of one per batch (the official code
            draws one per batch).
        cmixup_scope: ``"dataset"``: partners drawn from the whole training set (the paper;
            needs an in-memory dataset); ``"batch"``: from the current batch.
        cmixup_window: Restrict each partner softmax to the ``K`` nearest labels (``0`` =
            exact).
    """

    name: str = "l1"
    augment: bool = True
    standardize_target: bool = True
    cmixup: bool = False
    cmixup_sigma: float = 1.0
    mixup_alpha: float = 2.0
    mixup_per_sample: bool = False
    cmixup_scope: str = "dataset"
    cmixup_window: int = 0

    def check(self) -> None:
        require(self.cmixup_sigma > 0, "cmixup_sigma", self.cmixup_sigma, "> 0")
        require(self.mixup_alpha > 0, "mixup_alpha", self.mixup_alpha, "> 0")
        require(self.cmixup_scope in CMIXUP_SCOPES, "cmixup_scope", self.cmixup_scope,
                "one of " + ", ".join(CMIXUP_SCOPES))
        require(self.cmixup_window >= 0, "cmixup_window", self.cmixup_window, ">= 0")


class L1Regression(Method):
    """L1 regression from scratch with a linear head, optional C-Mixup.

    Logs ``train_loss`` (L1 in standard units), ``train_mae`` (in label units) and, with C-Mixup,
    ``cmixup_label_gap`` (mean ``|y_i - y_partner|``). Leaves the head (``head.pt``, listed in
    ``artifacts.json``). The C-Mixup draws (``lam`` and partners) come from this method's seeded
    ``cmixup`` generator on the CPU, the same stream on every DDP rank, saved in the checkpoint.

    Attributes:
        head: ``Linear(backbone.output_dim, 1)``.
        y_mean, y_std: Target standardisation (buffers; ``0`` and ``1`` when off).

    Shapes:
        ``training_step((x [B, ...] or [view1, view2], y [B], idx [B]))``; the head predicts
        ``[B]``. Loaders that yield views use the first.
    """

    name = "l1"
    Config = L1Config
    tasks = ("regression",)
    y_mean: Tensor
    y_std: Tensor

    def __init__(self, cfg: dict[str, Any], data: DataBundle) -> None:
        super().__init__(cfg, data)
        c = self.config
        self.head = nn.Linear(int(self.backbone.output_dim), 1)  # type: ignore[arg-type]
        need_labels = c.standardize_target or (c.cmixup and c.cmixup_scope == "dataset")
        train_labels = dataset_labels(data.pretrain) if need_labels else None
        mean, std = 0.0, 1.0
        if c.standardize_target:
            assert train_labels is not None
            mean = float(train_labels.mean())
            std = float(train_labels.std()) if train_labels.numel() > 1 else 1.0
            std = std if std > 0 and math.isfinite(std) else 1.0
        self.register_buffer("y_mean", torch.tensor(mean))
        self.register_buffer("y_std", torch.tensor(std))
        self.use_augment = bool(c.augment) and self.batch_augment is not None
        self.window = int(c.cmixup_window) or None
        self.sampler: CMixupSampler | None = None
        self.train_inputs: Tensor | None = None
        if c.cmixup and c.cmixup_scope == "dataset":
            x = getattr(data.pretrain, "x", None)
            if not isinstance(x, Tensor) or getattr(data.pretrain, "offset", 0) != 0:
                raise ValueError(
                    "`method.cmixup_scope: dataset` needs an in-memory training set; "
                    "use `cmixup_scope: batch`"
                )
            assert train_labels is not None
            self.sampler = CMixupSampler(train_labels, c.cmixup_sigma, window=self.window)
            # Not buffers: kept out of the checkpoint; rows are moved to the device when drawn.
            self.train_inputs = x
            self._train_labels = train_labels
        self._host_labels: tuple[Tensor, Tensor] | None = None

    def learnable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.head]

    def predict(self, x: Tensor) -> Tensor:
        """Predictions ``[B]`` in label units."""
        return self.head(self.backbone(x))[:, 0] * self.y_std + self.y_mean

    def maybe_augment(self, x: Tensor) -> Tensor:
        """One augmented view of ``x`` when ``method.augment`` (and the data has one), else
        ``x``."""
        return self.augment(x) if self.use_augment else x

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With C-Mixup, keep the loader's labels and indices while they are still on the host:
        the partners are drawn there (the seeded CPU stream), and reading them back from the
        device would synchronise every step."""
        if self.config.cmixup and isinstance(batch, (list, tuple)) and len(batch) == 3:
            _, y, idx = batch
            if isinstance(y, Tensor) and isinstance(idx, Tensor):
                self._host_labels = (y, idx)
        return batch

    def mixed_batch(
        self, x: Tensor, y: Tensor, idx: Tensor, host: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """C-Mixup of a batch.

        Args:
            x: ``[B, ...]`` raw inputs.
            y: ``[B]`` labels.
            idx: ``[B]`` dataset indices.
            host: ``(y, idx)`` of the batch on the host (what the loader gave, before the move
                to the device); ``None``: copied from ``y`` and ``idx`` (a device-to-host
                read when they live on an accelerator).

        Returns:
            ``(x_mix [B, ...], y_mix [B], lam [B], y_partner [B])`` with
            ``x_mix = lam * aug(x) + (1 - lam) * aug(x_partner)`` (augmentation only when
            ``method.augment``) and ``y_mix = lam * y + (1 - lam) * y_partner``.
        """
        c = self.config
        b = x.shape[0]
        if host is None or host[0].shape != y.shape or host[1].shape != idx.shape:
            host = (y.detach().cpu(), idx.detach().cpu())
        y_host, idx_host = host
        g_cpu = self.generator("cmixup", "cpu", per_rank=False)
        lam = sample_lambda(b, c.mixup_alpha, per_sample=c.mixup_per_sample, generator=g_cpu)
        # host-to-device copies that do not wait for the device (the draws stay on the host)
        lam = lam.to(x.device, non_blocking=True)
        yf = y.float()
        if self.sampler is not None:  # partners from the whole training set
            assert self.train_inputs is not None
            j = self.sampler.sample(idx_host.long(), generator=g_cpu)
            xp = self.train_inputs[j].to(x.device, x.dtype, non_blocking=True)
            yp = self._train_labels[j].to(y.device, non_blocking=True)
            x_all = self.maybe_augment(torch.cat([x, xp], dim=0))  # independent draws
            xa, xp = x_all[:b], x_all[b:]
        else:  # partners from the batch
            xa = self.maybe_augment(x)
            j = cmixup_partners(y_host.float(), c.cmixup_sigma, window=self.window,
                                generator=g_cpu).to(x.device, non_blocking=True)
            xp, yp = xa[j], yf[j]
        lx = lam.to(xa.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return lx * xa + (1 - lx) * xp, lam * yf + (1 - lam) * yp, lam, yp

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, idx = batch
        x = self.first_view(x)
        b = x.shape[0]
        if self.config.cmixup:
            host, self._host_labels = self._host_labels, None  # this batch's, used once
            x_in, y_in, _, y_partner = self.mixed_batch(x, y, idx, host)
            gap = (y.float() - y_partner).abs().mean()
            self.log("cmixup_label_gap", gap, on_step=False, on_epoch=True,
                     sync_dist=True, batch_size=b)
        else:
            x_in, y_in = self.maybe_augment(x), y.float()
        out = self.head(self.backbone(x_in))[:, 0].float()
        target = (y_in.float() - self.y_mean) / self.y_std
        loss = F.l1_loss(out, target)
        self.log_train_loss(loss, b)
        self.log("train_mae", loss.detach() * self.y_std, on_step=False, on_epoch=True,
                 sync_dist=True, batch_size=b)
        return loss

    def export_artifacts(self, run_dir: Path) -> RunArtifacts:
        art = super().export_artifacts(run_dir)
        save_state(self.head, run_dir / "head.pt")
        art.files["head.pt"] = ("Linear(backbone.output_dim, 1) regression head; predictions "
                                f"in label units are head(x) * {float(self.y_std):.6g} + "
                                f"{float(self.y_mean):.6g}")
        return art
