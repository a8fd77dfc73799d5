"""Lightning modules of the regression recipes (METHODS.md §2, §3).

* :class:`ContrastiveRegressionModule` — ``supremix``, ``rnc`` and ``supcon`` (on binned
  labels): two augmented views per sample, backbone, projector, loss on the L2-normalised
  projections ``[B, 2, d]`` (RnC optionally unnormalised). Under DDP the projections and labels
  of all ranks are gathered (with gradient) so that the loss sees the global batch.
* :class:`L1RegressionModule` — ``l1``: supervised L1 regression from scratch with a linear
  head on the backbone (the backbone is what ``contrastmix probe`` evaluates), optionally with
  C-Mixup (Yao et al., NeurIPS 2022): each sample is mixed with a partner drawn with
  probability ``softmax_j(-|y_i - y_j|^2 / (2 sigma^2))`` from the training set (or the batch),
  ``lambda ~ Beta(alpha, alpha)``.

The maths lives in :mod:`contrastmix.losses` and :mod:`contrastmix.mixing`; these modules wire
data, encoders and logging. Every random draw (views, Beta draws, C-Mixup partners) comes from
seeded ``torch.Generator`` objects whose states are saved in the checkpoint, so a resumed run
continues the same random stream.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastmix.data.registry import DataBundle
from contrastmix.distributed import gather_no_grad, gather_with_grad, is_distributed
from contrastmix.models.build import build_backbone, build_projector
from contrastmix.train.optim import build_optimizer
from contrastmix.train.pretrain import register_module

__all__ = [
    "ContrastiveRegressionModule",
    "L1RegressionModule",
    "SeededGenerators",
    "dataset_labels",
    "label_bin_edges",
]


# --------------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------------
class SeededGenerators:
    """Named ``torch.Generator`` objects created lazily on the device that needs them.

    Generator ``name`` is seeded with ``seed + offset`` (e.g. ``offset = rank`` for view
    augmentation, ``0`` for draws that must agree across ranks). ``state_dict`` /
    ``load_state_dict`` carry the states through a checkpoint (a state loaded before the
    generator exists is applied when it is first created).
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._gens: dict[str, torch.Generator] = {}
        self._pending: dict[str, Tensor] = {}

    def get(self, name: str, device: torch.device | str, offset: int = 0) -> torch.Generator:
        """The generator ``name`` on ``device`` (created and seeded on first use)."""
        dev = torch.device(device)
        g = self._gens.get(name)
        if g is None or g.device.type != dev.type:
            g = torch.Generator(device=dev)
            g.manual_seed(self.seed * 1_000_003 + offset * 7919 + sum(map(ord, name)))
            if name in self._pending:
                g.set_state(self._pending.pop(name))
            self._gens[name] = g
        return g

    def state_dict(self) -> dict[str, Tensor]:
        """CPU byte-tensor states of every generator created (or pending)."""
        out = dict(self._pending)
        out.update({k: g.get_state() for k, g in self._gens.items()})
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore states (applied now, or when each generator is first created)."""
        for k, v in state.items():
            if k in self._gens:
                self._gens[k].set_state(v)
            else:
                self._pending[k] = v


def dataset_labels(ds: Any) -> Tensor:
    """``[N]`` float labels of a dataset yielding ``(x, y, idx)`` (``.y`` when in memory)."""
    y = getattr(ds, "y", None)
    if isinstance(y, Tensor):
        return y.detach().float().reshape(-1).cpu()
    return torch.tensor([float(ds[i][1]) for i in range(len(ds))])


def label_bin_edges(labels: Tensor, num_bins: int, bin_range: list[float] | None) -> Tensor:
    """Inner edges ``[num_bins - 1]`` of equal-width bins over ``bin_range`` (default: the
    labels' min and max), for ``torch.bucketize`` (bin ids ``0 .. num_bins - 1``)."""
    if num_bins < 1:
        raise ValueError(f"`method.num_bins` must be >= 1, got {num_bins}")
    if bin_range:
        if len(bin_range) != 2 or not bin_range[1] > bin_range[0]:
            raise ValueError(f"`method.bin_range` must be [low, high], got {bin_range}")
        low, high = float(bin_range[0]), float(bin_range[1])
    else:
        low, high = float(labels.min()), float(labels.max())
        if not high > low:
            high = low + 1.0
    return torch.linspace(low, high, num_bins + 1, dtype=torch.float64)[1:-1]


class _RegressionBase(pl.LightningModule):
    """Shared parts: backbone, views, generators in the checkpoint, optimiser."""

    def __init__(
        self, cfg: dict[str, Any], in_channels: int, batch_augment: Any, steps_per_epoch: int
    ) -> None:
        super().__init__()
        self.save_hyperparameters({"cfg": cfg, "in_channels": in_channels,
                                   "steps_per_epoch": steps_per_epoch})
        self.cfg = cfg
        mc = cfg["model"]
        self.method_name = cfg["method"]["name"]
        self.backbone = build_backbone(
            mc["backbone"], in_channels=in_channels, width=mc["width"],
            cifar_stem=mc["cifar_stem"],
        )
        self.batch_augment = batch_augment
        self.steps_per_epoch = steps_per_epoch
        self.generators = SeededGenerators(int(cfg.get("seed", 0)))

    def forward(self, x: Tensor) -> Tensor:
        """Backbone features ``[B, output_dim]`` (what the probe uses)."""
        return self.backbone(x)

    def _augment(self, x: Tensor) -> Tensor:
        if self.batch_augment is None:
            raise ValueError("the loader yields raw tensors but the dataset has no batch_augment")
        g = self.generators.get("views", x.device, offset=self.global_rank)
        return self.batch_augment(x, generator=g)

    def _trainable(self) -> list[nn.Module]:
        return [self.backbone]

    def configure_optimizers(self) -> Any:
        return build_optimizer(
            _Obj(self.cfg["optim"]), self._trainable(), self.steps_per_epoch,
            self.trainer.max_epochs or 1,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["generator_states"] = self.generators.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.generators.load_state_dict(checkpoint.get("generator_states", {}))


# --------------------------------------------------------------------------------------------
# Contrastive pretraining: SupReMix / RnC / SupCon on binned labels.
# --------------------------------------------------------------------------------------------
class ContrastiveRegressionModule(_RegressionBase):
    """Two-view contrastive pretraining for regression.

    ``method.name``: ``supremix`` (:class:`~contrastmix.losses.supremix.SupReMixLoss`, Wu et
    al. 2023), ``rnc`` (:class:`~contrastmix.losses.rnc.RnCLoss`, Zha et al. 2023) or
    ``supcon`` (:class:`~contrastmix.losses.supcon.SupConLoss`, Khosla et al. 2020, positives =
    same equal-width label bin).

    Args:
        cfg: The recipe as a plain dict (saved as hyper-parameters).
        in_channels: Input channels (features for tabular data).
        batch_augment: ``aug(x, generator=None)`` applied twice per batch (two views).
        steps_per_epoch: Optimiser steps per epoch (schedules).
        train_labels: ``[N]`` training labels (SupCon's default bin range).

    Shapes:
        ``training_step((x [B, ...], y [B], idx [B]))``: features ``[B, 2, proj_output_dim]``.
    """

    def __init__(
        self,
        cfg: dict[str, Any],
        in_channels: int,
        batch_augment: Any,
        steps_per_epoch: int = 1,
        train_labels: Tensor | None = None,
    ) -> None:
        super().__init__(cfg, in_channels, batch_augment, steps_per_epoch)
        m, mc = cfg["method"], cfg["model"]
        self.projector = build_projector(
            self.backbone.output_dim, mc["proj_hidden_dim"], mc["proj_output_dim"],
            batch_norm=mc["proj_batch_norm"],
        )
        self.normalize = True
        self.label_scale = 1.0
        if self.method_name == "supremix":
            from contrastmix.losses.supremix import SupReMixLoss

            scale = float(m["label_scale"])
            if not scale > 0:
                raise ValueError(f"`method.label_scale` must be > 0, got {scale}")
            self.label_scale = scale
            na = m["negative_alpha"]
            if len(na) != 2:
                raise ValueError(f"`method.negative_alpha` must be [alpha, beta], got {na}")
            self.loss_fn: nn.Module = SupReMixLoss(
                temperature=m["temperature"], window=float(m["window"]) / scale,
                negative_alpha=(float(na[0]), float(na[1])),
                hard_negatives=m["hard_negatives"], hard_positives=m["hard_positives"],
                distance_weighting=m["distance_weighting"],
            )
        elif self.method_name == "rnc":
            from contrastmix.losses.rnc import RnCLoss

            self.loss_fn = RnCLoss(temperature=m["temperature"])
            self.normalize = bool(m["normalize"])
        elif self.method_name == "supcon":
            from contrastmix.losses.supcon import SupConLoss

            self.loss_fn = SupConLoss(temperature=m["temperature"])
            if train_labels is None and not m["bin_range"]:
                raise ValueError("supcon needs `train_labels` or `method.bin_range` for its bins")
            ref = train_labels if train_labels is not None else torch.zeros(1)
            self.register_buffer(
                "bin_edges", label_bin_edges(ref, int(m["num_bins"]), list(m["bin_range"]))
            )
        else:
            raise ValueError(f"unknown contrastive regression method {self.method_name!r}")

    def _trainable(self) -> list[nn.Module]:
        return [self.backbone, self.projector]

    def loss_labels(self, y: Tensor) -> Tensor:
        """The labels the loss sees: bin ids (SupCon), ``y / label_scale`` (SupReMix), ``y``."""
        if self.method_name == "supcon":
            return torch.bucketize(y.double(), self.bin_edges.to(y.device), right=True)
        return y.float() / self.label_scale

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, _ = batch
        if isinstance(x, (list, tuple)):
            x1, x2 = x[0], x[1]
        else:
            x1, x2 = self._augment(x), self._augment(x)
        b = x1.shape[0]
        z = self.projector(self.backbone(torch.cat([x1, x2], dim=0))).float()
        if self.normalize:
            z = F.normalize(z, dim=1)
        feats = torch.stack([z[:b], z[b:]], dim=1)  # [B, 2, d]
        labels = self.loss_labels(y)
        if is_distributed():
            feats = gather_with_grad(feats)
            labels = gather_no_grad(labels)
        if self.method_name == "supremix":
            g = self.generators.get("loss", feats.device)  # same draws on every rank
            loss = self.loss_fn(feats, labels, generator=g)
        else:
            loss = self.loss_fn(feats, labels)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=b)
        with torch.no_grad():  # alignment of the two views (monitoring only)
            zn = F.normalize(z.detach(), dim=1)
            align = (zn[:b] * zn[b:]).sum(dim=1).mean()
        self.log("view_cosine", align, on_step=False, on_epoch=True, batch_size=b)
        return loss


# --------------------------------------------------------------------------------------------
# Supervised baseline: L1 regression (+ C-Mixup).
# --------------------------------------------------------------------------------------------
class L1RegressionModule(_RegressionBase):
    """L1 regression from scratch: ``backbone -> Linear(output_dim, 1)``, optional C-Mixup.

    Args:
        cfg: The recipe as a plain dict (saved as hyper-parameters).
        in_channels: Input channels (features for tabular data).
        batch_augment: ``aug(x, generator=None)`` applied once to training inputs when
            ``method.augment`` (``None`` = no augmentation).
        steps_per_epoch: Optimiser steps per epoch.
        train_labels: ``[N]`` training labels (target standardisation, C-Mixup partners).
        train_inputs: ``[N, ...]`` training inputs, row ``i`` = dataset index ``i`` (needed for
            ``cmixup_scope: dataset``).

    Shapes:
        ``training_step((x [B, ...], y [B], idx [B]))``; the head predicts ``[B]``.
    """

    def __init__(
        self,
        cfg: dict[str, Any],
        in_channels: int,
        batch_augment: Any = None,
        steps_per_epoch: int = 1,
        train_labels: Tensor | None = None,
        train_inputs: Tensor | None = None,
    ) -> None:
        super().__init__(cfg, in_channels, batch_augment, steps_per_epoch)
        m = cfg["method"]
        self.head = nn.Linear(self.backbone.output_dim, 1)
        mean, std = 0.0, 1.0
        if m["standardize_target"]:
            if train_labels is None:
                raise ValueError("`method.standardize_target` needs `train_labels`")
            mean = float(train_labels.float().mean())
            std = float(train_labels.float().std()) if train_labels.numel() > 1 else 1.0
            std = std if std > 0 and math.isfinite(std) else 1.0
        self.register_buffer("y_mean", torch.tensor(mean))
        self.register_buffer("y_std", torch.tensor(std))
        self.use_augment = bool(m["augment"]) and batch_augment is not None
        self.cmixup = bool(m["cmixup"])
        self.sigma = float(m["cmixup_sigma"])
        self.alpha = float(m["mixup_alpha"])
        self.per_sample = bool(m["mixup_per_sample"])
        self.scope = str(m["cmixup_scope"])
        self.window = int(m["cmixup_window"]) or None
        self.sampler: Any = None
        self.train_inputs: Tensor | None = None
        if self.cmixup:
            from contrastmix.mixing.cmixup import CMixupSampler

            if not self.sigma > 0:
                raise ValueError(f"`method.cmixup_sigma` must be > 0, got {self.sigma}")
            if not self.alpha > 0:
                raise ValueError(f"`method.mixup_alpha` must be > 0, got {self.alpha}")
            if self.scope not in ("dataset", "batch"):
                raise ValueError(
                    f"`method.cmixup_scope` must be 'dataset' or 'batch', got {self.scope!r}"
                )
            if self.scope == "dataset":
                if train_inputs is None or train_labels is None:
                    raise ValueError(
                        "`method.cmixup_scope: dataset` needs an in-memory training set; "
                        "use `cmixup_scope: batch`"
                    )
                self.sampler = CMixupSampler(
                    train_labels.float().cpu(), self.sigma, window=self.window
                )
                # Not a buffer: kept out of the checkpoint, moved to the device on first use.
                self.train_inputs = train_inputs
                self._train_labels = train_labels.float()

    def _trainable(self) -> list[nn.Module]:
        return [self.backbone, self.head]

    def predict(self, x: Tensor) -> Tensor:
        """Predictions ``[B]`` in label units."""
        return self.head(self.backbone(x))[:, 0] * self.y_std + self.y_mean

    def _maybe_augment(self, x: Tensor) -> Tensor:
        return self._augment(x) if self.use_augment else x

    def mixed_batch(
        self, x: Tensor, y: Tensor, idx: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """C-Mixup of a batch.

        Args:
            x: ``[B, ...]`` raw inputs; y: ``[B]`` labels; idx: ``[B]`` dataset indices.

        Returns:
            ``(x_mix [B, ...], y_mix [B], lam [B], y_partner [B])`` with
            ``x_mix = lam * aug(x) + (1 - lam) * aug(x_partner)`` (augmentation only when
            ``method.augment``) and ``y_mix = lam * y + (1 - lam) * y_partner``.
        """
        from contrastmix.mixing.cmixup import cmixup_partners, sample_lambda

        b = x.shape[0]
        g_cpu = self.generators.get("cmixup", "cpu")
        lam = sample_lambda(b, self.alpha, per_sample=self.per_sample, generator=g_cpu)
        lam = lam.to(x.device)
        yf = y.float()
        if self.scope == "dataset":
            assert self.train_inputs is not None and self.sampler is not None
            j = self.sampler.sample(idx.detach().cpu().long(), generator=g_cpu)
            xp = self.train_inputs[j].to(x.device, x.dtype)
            yp = self._train_labels[j].to(y.device)
            x_all = self._maybe_augment(torch.cat([x, xp], dim=0))  # independent draws
            xa, xp = x_all[:b], x_all[b:]
        else:
            xa = self._maybe_augment(x)
            j = cmixup_partners(yf.detach().cpu(), self.sigma, window=self.window,
                                generator=g_cpu).to(x.device)
            xp, yp = xa[j], yf[j]
        lx = lam.to(xa.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return lx * xa + (1 - lx) * xp, lam * yf + (1 - lam) * yp, lam, yp

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, idx = batch
        if isinstance(x, (list, tuple)):  # loaders that yield views: use the first
            x = x[0]
        b = x.shape[0]
        if self.cmixup:
            x_in, y_in, _, y_partner = self.mixed_batch(x, y, idx)
            gap = (y.float() - y_partner).abs().mean()
            self.log("cmixup_label_gap", gap, on_step=False, on_epoch=True, batch_size=b)
        else:
            x_in, y_in = self._maybe_augment(x), y.float()
        out = self.head(self.backbone(x_in))[:, 0].float()
        target = (y_in.float() - self.y_mean) / self.y_std
        loss = F.l1_loss(out, target)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=b)
        self.log("train_mae", loss.detach() * self.y_std, on_step=False, on_epoch=True,
                 batch_size=b)
        return loss


class _Obj:
    """Attribute access to a plain dict (for the optimiser builder)."""

    def __init__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)


# --------------------------------------------------------------------------------------------
# Factories.
# --------------------------------------------------------------------------------------------
def _check_task(data: DataBundle, method: str) -> None:
    if data.task != "regression":
        raise ValueError(
            f"method '{method}' needs a regression dataset (task 'regression'), got a "
            f"'{data.task}' dataset"
        )


def _contrastive_factory(
    cfg: dict[str, Any], data: DataBundle, steps: int
) -> pl.LightningModule:
    _check_task(data, cfg["method"]["name"])
    return ContrastiveRegressionModule(
        cfg, data.in_channels, data.batch_augment, steps, train_labels=dataset_labels(data.train)
    )


def _l1_factory(cfg: dict[str, Any], data: DataBundle, steps: int) -> pl.LightningModule:
    _check_task(data, "l1")
    x = getattr(data.pretrain, "x", None)
    inputs = x if isinstance(x, Tensor) and getattr(data.pretrain, "offset", 0) == 0 else None
    return L1RegressionModule(
        cfg, data.in_channels, data.batch_augment, steps,
        train_labels=dataset_labels(data.pretrain), train_inputs=inputs,
    )


for _name in ("supremix", "rnc", "supcon"):
    register_module(_name, _contrastive_factory)
register_module("l1", _l1_factory)
