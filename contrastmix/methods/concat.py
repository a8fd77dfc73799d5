"""Concatenation fusion: a multimodal classifier trained with cross-entropy only
(docs/methods.md §6, M3CoL's baseline).

Kumar, Singhal et al., "Harnessing Shared Relations via Multimodal Mixup Contrastive Learning
for Multimodal Classification", 2024 (arXiv:2409.17777), the baseline without ``L_contrast``.

Each modality ``m`` has an encoder and a projection ``z_m [B, proj_dim]``; a fusion head reads
``concat_m z_m`` and one head per modality reads ``z_m``
(:class:`~contrastmix.models.multimodal.M3CoLModel`). The loss is
``CE(fusion) + sum_m CE(unimodal_m)`` plus :meth:`Concat.contrast_term` (nothing here; M3CoL
adds its contrastive term through it). Predictions use the fusion head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastmix.data.registry import DataBundle
from contrastmix.methods._multimodal import (
    MultimodalMethod,
    check_modalities,
    check_signal_backbone,
)
from contrastmix.methods.base import MethodConfig, require
from contrastmix.models.multimodal import MODALITIES

__all__ = ["ConcatConfig", "Concat"]


@dataclass
class ConcatConfig(MethodConfig):
    """Fusion-classifier settings (the recipe's ``method`` section).

    Attributes:
        modalities: Modalities used, in concatenation order: at least two distinct names from
            ``image``, ``signal``, ``text``, including ``image`` (whose encoder is the recipe's
            ``model.backbone``).
        proj_dim: Width of each modality's projected embedding ``z_m``.
        hidden_dim: Hidden width of the MLP heads.
        dropout: Dropout of the heads, in ``[0, 1)``.
        signal_backbone: Backbone of the ``signal`` modality (``cnn1d``).
        signal_width: Width of the signal backbone.
        text_frozen: Keep MiniLM frozen (embeddings cached; only projections are trained).
        text_cache: Cache the frozen MiniLM sentence embeddings per caption.
    """

    name: str = "concat"
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    proj_dim: int = 64
    hidden_dim: int = 128
    dropout: float = 0.1
    signal_backbone: str = "cnn1d"
    signal_width: int = 16
    text_frozen: bool = True
    text_cache: bool = True

    def check(self) -> None:
        check_modalities(self.modalities)
        require(self.proj_dim >= 1, "proj_dim", self.proj_dim, ">= 1")
        require(self.hidden_dim >= 1, "hidden_dim", self.hidden_dim, ">= 1")
        require(0 <= self.dropout < 1, "dropout", self.dropout, "in [0, 1)")
        check_signal_backbone(self.signal_backbone)
        require(self.signal_width >= 1, "signal_width", self.signal_width, ">= 1")


class Concat(MultimodalMethod):
    """Fusion + unimodal heads trained with cross-entropy.

    Logs ``train_loss``, ``fusion_ce``, ``unimodal_ce`` (summed over the modalities),
    ``contrast`` (the unweighted :meth:`contrast_term`; 0 here) and ``train_acc`` (fusion head),
    and every ``eval.knn_every_n_epochs`` epochs the test-split fusion accuracy ``fusion_acc``.

    Shapes:
        ``training_step(({modality: [B, ...] or B captions}, y [B], idx [B]))``; logits
        ``[B, num_classes]``, embeddings ``[B, proj_dim]``.
    """

    name = "concat"
    Config = ConcatConfig
    monitor_metric = "fusion_acc"

    def __init__(self, cfg: dict[str, Any], data: DataBundle) -> None:
        super().__init__(cfg, data)
        self.modalities = list(self.config.modalities)

    def architecture(self, data: DataBundle) -> dict[str, Any]:
        c = self.config
        return {
            "architecture": "fusion",
            "arguments": {
                "modalities": list(c.modalities), "in_channels": int(data.in_channels),
                "num_classes": int(data.num_classes), "proj_dim": int(c.proj_dim),
                "hidden_dim": int(c.hidden_dim), "dropout": float(c.dropout),
                "signal_backbone": str(c.signal_backbone), "signal_width": int(c.signal_width),
                "signal_channels": int((data.extras or {}).get("signal_channels", 1)),
                "text_frozen": bool(c.text_frozen), "text_cache": bool(c.text_cache),
            },
        }

    def select(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The recipe's modalities of a batch (a clear error when the dataset lacks one)."""
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise ValueError(
                f"the batch lacks modalities {missing}: method.modalities asks for "
                f"{self.modalities}, the dataset gives {sorted(inputs)}"
            )
        return {m: inputs[m] for m in self.modalities}

    # ------------------------------------------------------------------ the loss
    def contrast_term(self, embeddings: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``(term added to the loss, contrastive loss logged as contrast)`` of the projected
        embeddings ``[B, proj_dim]`` (in :attr:`modalities` order). None here: zeros."""
        zero = embeddings[0].new_zeros((), dtype=torch.float32)
        return zero, zero

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        inputs, y, _ = batch
        out = self.model(self.augment_inputs(self.select(inputs)))
        with torch.autocast(device_type=y.device.type, enabled=False):
            fusion_ce = F.cross_entropy(out.fusion_logits.float(), y)
            uni_ce = torch.stack([F.cross_entropy(out.unimodal_logits[m].float(), y)
                                  for m in self.modalities]).sum()
        term, contrast = self.contrast_term([out.embeddings[m] for m in self.modalities])
        loss = fusion_ce + uni_ce + term
        acc = (out.fusion_logits.argmax(dim=1) == y).float().mean()
        bs = y.shape[0]
        self.log_train_loss(loss, bs)
        self.log("fusion_ce", fusion_ce, on_step=False, on_epoch=True,
                 sync_dist=True, batch_size=bs)
        self.log("unimodal_ce", uni_ce, on_step=False, on_epoch=True, sync_dist=True, batch_size=bs)
        self.log("contrast", contrast.detach(), on_step=False, on_epoch=True,
                 sync_dist=True, batch_size=bs)
        self.log("train_acc", acc, on_step=False, on_epoch=True, sync_dist=True, batch_size=bs)
        return loss

    # ------------------------------------------------------------------ monitor
    def monitor(self) -> float:
        correct = total = 0
        for inputs, y in self.test_batches():
            pred = self.model.predict(self.select(inputs)).argmax(dim=1)
            correct += int((pred == y).sum())
            total += len(y)
        return correct / max(1, total)
