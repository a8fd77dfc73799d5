"""CLIP: symmetric image-text InfoNCE on a two-tower model (docs/methods.md §5).

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
ICML 2021.

The image tower is the recipe's backbone plus a linear projection, the text tower MiniLM
(frozen by default) plus a linear projection; both embeddings ``[B, proj_dim]`` are
L2-normalised and ``L = 1/2 [CE(I T^T / τ, diag) + CE(T I^T / τ, diag)]``
(:func:`contrastmix.losses.clip.clip_loss`), with every rank's pairs as negatives under DDP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from contrastmix.data.registry import DataBundle
from contrastmix.losses.clip import clip_loss
from contrastmix.methods._multimodal import MultimodalMethod
from contrastmix.methods.base import MethodConfig, require

__all__ = ["ClipConfig", "CLIP"]


@dataclass
class ClipConfig(MethodConfig):
    """CLIP settings (the recipe's ``method`` section).

    Attributes:
        proj_dim: Width of the shared embedding space (linear projection of each tower).
        temperature: CLIP τ (initial value when learnt).
        learn_temperature: Learn τ (log-parametrised, clamped to >= 0.01 as in CLIP).
        text_frozen: Keep MiniLM frozen (only its projection is trained; embeddings cached).
        text_cache: Cache the frozen MiniLM sentence embeddings per caption.
        zero_shot_temperature: τ of the zero-shot probabilities ``softmax(cos / τ)`` evaluation
            uses for calibration; ``None`` = the model's (trained) CLIP temperature.
        gather_distributed: Use every rank's negatives under DDP.
    """

    name: str = "clip"
    proj_dim: int = 64
    temperature: float = 0.07
    learn_temperature: bool = False
    text_frozen: bool = True
    text_cache: bool = True
    zero_shot_temperature: float | None = None
    gather_distributed: bool = True

    def check(self) -> None:
        require(self.proj_dim >= 1, "proj_dim", self.proj_dim, ">= 1")
        require(self.temperature > 0, "temperature", self.temperature, "> 0")
        require(self.zero_shot_temperature is None or self.zero_shot_temperature > 0,
                "zero_shot_temperature", self.zero_shot_temperature, "> 0 or null")


class CLIP(MultimodalMethod):
    """CLIP training on image-caption pairs.

    Logs ``train_loss``, ``clip_loss`` and ``temperature`` and, every
    ``eval.knn_every_n_epochs`` epochs, the zero-shot accuracy ``zs_acc`` on the test split
    (one prompt per class, ``data.extras["class_prompts"]``) or, for data without classes,
    the instance-level image->text hit rate@1 ``i2t_hit_rate@1`` on the test split (the
    paired caption ranked first among all test captions).

    Shapes:
        ``training_step(({"image": [B, C, H, W], "text": B captions}, y [B], idx [B]))``;
        embeddings ``[B, proj_dim]``.
    """

    name = "clip"
    Config = ClipConfig
    monitor_metric = "zs_acc"

    def __init__(self, cfg: dict[str, Any], data: DataBundle) -> None:
        super().__init__(cfg, data)
        prompts = (data.extras or {}).get("class_prompts")
        self.prompts = list(prompts) if prompts is not None else None
        if self.prompts is None:
            self.monitor_metric = "i2t_hit_rate@1"

    def architecture(self, data: DataBundle) -> dict[str, Any]:
        c = self.config
        return {
            "architecture": "two_tower",
            "arguments": {
                "in_channels": int(data.in_channels), "proj_dim": int(c.proj_dim),
                "temperature": float(c.temperature),
                "learn_temperature": bool(c.learn_temperature),
                "text_frozen": bool(c.text_frozen), "text_cache": bool(c.text_cache),
            },
            "zero_shot_temperature": c.zero_shot_temperature,
        }

    # ------------------------------------------------------------------ the loss
    def objective(self, image: Tensor, text: Tensor, temperature: Tensor
                  ) -> tuple[Tensor, dict[str, Any]]:
        """The loss of unit embeddings ``image [B, d]``, ``text [B, d]`` at the model's τ, and
        what to log besides ``train_loss`` (tensors or floats: no host synchronisation)."""
        loss = clip_loss(image, text, temperature,
                         gather_distributed=self.config.gather_distributed)
        return loss, {"clip_loss": loss}

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        inputs, y, _ = batch
        inputs = self.augment_inputs(inputs)
        img, txt = self.model(inputs["image"], inputs["text"])
        tau = self.model.temperature
        loss, logs = self.objective(img, txt, tau)
        bs = y.shape[0]
        self.log_train_loss(loss, bs)
        for k, v in logs.items():
            self.log(k, v, on_step=False, on_epoch=True, sync_dist=True, batch_size=bs)
        self.log("temperature", tau.detach(), on_step=False, on_epoch=True,
                 sync_dist=True, batch_size=bs)
        return loss

    # ------------------------------------------------------------------ monitor
    def monitor(self) -> float:
        if self.prompts is None:
            return self._monitor_retrieval()
        prompts = self.model.encode_text(self.prompts)
        correct = total = 0
        for inputs, y in self.test_batches():
            pred = (self.model.encode_image(inputs["image"]) @ prompts.T).argmax(dim=1)
            correct += int((pred == y).sum())
            total += len(y)
        return correct / max(1, total)

    def _monitor_retrieval(self) -> float:
        """Instance-level image->text hit rate@1 on the test split (pessimistic ties)."""
        img, txt = [], []
        for inputs, _ in self.test_batches():
            img.append(self.model.encode_image(inputs["image"]))
            txt.append(self.model.encode_text(list(inputs["text"])))
        if not img:
            return float("nan")
        sim = torch.cat(img).float() @ torch.cat(txt).float().T
        own = sim.diagonal()
        # a hit: no other caption at least as similar as the paired one
        beaten = (sim >= own[:, None]).sum(dim=1) - 1
        return float((beaten == 0).float().mean())
