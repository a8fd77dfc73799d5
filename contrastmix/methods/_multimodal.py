"""What the multimodal methods share: the network, the augmentation of a modality dict, the
test-split monitor and the export of the network for evaluation.

Batches are ``({modality: value}, labels, index)`` (:mod:`contrastmix.data.bundles_multimodal`):
images ``[B, C, H, W]``, signals ``[B, C, L]``, captions a list of ``B`` strings.

A subclass of :class:`MultimodalMethod` describes its network by kind
(:meth:`MultimodalMethod.architecture`: ``{"architecture": "two_tower" | "fusion", "arguments":
{...}}``); the base builds it with :func:`contrastmix.models.multimodal.build_multimodal` (no
Lightning, no method names) and writes the same description to ``multimodal.json`` at export, so
evaluation rebuilds the network from the run directory alone. ``self.backbone`` is the network's
image encoder (``backbone.pt``); ``model.pt`` holds everything else of the network.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from contrastmix._json import dumps
from contrastmix._state import load_strict
from contrastmix.data.registry import DataBundle
from contrastmix.methods.base import Method, require
from contrastmix.models.multimodal import (
    MODALITIES,
    SIGNAL_BACKBONES,
    SPEC_FILE,
    build_multimodal,
    image_encoder_of,
)
from contrastmix.rundir import RunArtifacts

__all__ = ["MultimodalMethod", "MODEL_FILE", "check_modalities", "check_signal_backbone"]

#: The file holding the network's weights except the image encoder's (``backbone.pt``).
MODEL_FILE = "model.pt"


def check_modalities(modalities: list[str]) -> None:
    """``method.modalities``: at least two distinct names from
    :data:`~contrastmix.models.multimodal.MODALITIES`, including ``image``."""
    mods = list(modalities)
    require(len(mods) >= 2 and len(set(mods)) == len(mods) and all(m in MODALITIES for m in mods),
            "modalities", mods, f"at least two distinct names from {list(MODALITIES)}")
    require("image" in mods, "modalities", mods, "a list including 'image' (the run's backbone)")


def check_signal_backbone(name: str) -> None:
    """``method.signal_backbone``: one of
    :data:`~contrastmix.models.multimodal.SIGNAL_BACKBONES`."""
    require(name in SIGNAL_BACKBONES, "signal_backbone", name,
            "one of " + ", ".join(SIGNAL_BACKBONES))


class MultimodalMethod(Method):
    """Base of the multimodal methods (``task == "multimodal"``).

    Attributes:
        model: The network (:class:`~contrastmix.models.multimodal.TwoTower` or
            :class:`~contrastmix.models.multimodal.M3CoLModel`).
        spec: Its description (what ``multimodal.json`` holds besides file names).
        signal_augment: The bundle's on-device signal augmentation, or ``None``.

    Subclasses write :meth:`architecture`, ``training_step`` and :meth:`monitor`, and set
    :attr:`monitor_metric`.
    """

    tasks = ("multimodal",)
    #: Name of the test-split metric :meth:`monitor` returns (logged every
    #: ``eval.knn_every_n_epochs`` epochs).
    monitor_metric = ""

    def __init__(self, cfg: dict[str, Any], data: DataBundle) -> None:
        super().__init__(cfg, data)
        extras = dict(data.extras or {})
        self.signal_augment = extras.get("signal_augment")
        self.test_set = data.test
        self.collate_fn = data.collate_fn
        self.eval_batch_size = int(cfg["data"]["eval_batch_size"])
        self.monitor_every = int(cfg["eval"]["knn_every_n_epochs"])

    # ------------------------------------------------------------------ building
    def architecture(self, data: DataBundle) -> dict[str, Any]:
        """The network by kind: ``{"architecture": KIND, "arguments": {...}}`` with the keyword
        arguments of :func:`~contrastmix.models.multimodal.build_two_tower` or
        :func:`~contrastmix.models.multimodal.build_fusion`; any further keys are settings
        evaluation reads (e.g. ``zero_shot_temperature``)."""
        raise NotImplementedError

    def build_backbone(self, data: DataBundle) -> nn.Module:
        """Build :attr:`model` from :meth:`architecture`; the backbone is its image encoder."""
        self.spec = self.architecture(data)
        # a TwoTower or an M3CoLModel, as the subclass's architecture says
        self.model: Any = build_multimodal(self.spec, self.cfg["model"])
        encoder = image_encoder_of(self.model)[0]
        weights = self.cfg["model"].get("weights")
        if weights is not None:  # the image encoder starts from them (evaluation never reads)
            load_strict(encoder, weights, f"backbone {self.cfg['model']['backbone']!r} "
                        "(model.weights)")
        return encoder

    def learnable_modules(self) -> list[nn.Module]:
        return [self.model]

    # ------------------------------------------------------------------ inputs
    def augment_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Augment images (``batch_augment``, stream ``views``) and signals (``signal_augment``,
        stream ``signal_views``) of a modality dict on the device; captions pass unchanged."""
        out = dict(inputs)
        if self.batch_augment is not None and "image" in out:
            out["image"] = self.augment(out["image"])
        if self.signal_augment is not None and "signal" in out:
            x = out["signal"]
            out["signal"] = self.signal_augment(x, generator=self.generator("signal_views",
                                                                            x.device))
        return out

    # ------------------------------------------------------------------ test-split monitor
    def test_batches(self) -> Iterator[tuple[dict[str, Any], Tensor]]:
        """``({modality: batch on the device}, labels)`` of the test split, no augmentation."""
        loader = DataLoader(self.test_set, batch_size=self.eval_batch_size, shuffle=False,
                            collate_fn=self.collate_fn)
        for inputs, y, _ in loader:
            yield ({k: (v.to(self.device) if isinstance(v, Tensor) else v)
                    for k, v in inputs.items()}, y.to(self.device))

    def monitor(self) -> float:
        """The test-split value of :attr:`monitor_metric` (model in eval mode, no gradient)."""
        raise NotImplementedError

    def on_train_epoch_end(self) -> None:
        """Log :meth:`monitor` every ``eval.knn_every_n_epochs`` epochs and at the last one."""
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
                value = self.monitor()
        finally:
            self.model.train(was_training)
        self.log(self.monitor_metric, value, on_step=False, on_epoch=True, sync_dist=False)

    # ------------------------------------------------------------------ export
    def export_artifacts(self, run_dir: Path) -> RunArtifacts:
        """``model.pt`` (the network without its image encoder, which is ``backbone.pt``, and
        without a frozen MiniLM, which is reloaded from its package) and ``multimodal.json``
        (:attr:`spec` plus the file names)."""
        art = super().export_artifacts(run_dir)
        _, prefix = image_encoder_of(self.model)
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()
                 if not k.startswith(prefix)}
        torch.save(state, run_dir / MODEL_FILE)
        meta = {**self.spec, "model_file": MODEL_FILE, "backbone_file": "backbone.pt",
                "image_encoder_prefix": prefix, "method": self.name}
        (run_dir / SPEC_FILE).write_text(dumps(meta, indent=2))
        art.files[MODEL_FILE] = ("state_dict of the multimodal network without the image "
                                 f"encoder (keys '{prefix}*', in backbone.pt) and without a "
                                 "frozen MiniLM")
        art.files[SPEC_FILE] = ("the network by kind (architecture + arguments of "
                                "contrastmix.models.multimodal.build_multimodal)")
        if self.monitor_every > 0:
            art.expected_metrics = [self.monitor_metric]
        return art
