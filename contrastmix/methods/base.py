"""The shared base of every method: :class:`MethodConfig` and :class:`Method`.

A method is one file in :mod:`contrastmix.methods`: a config dataclass (defaults and checks
next to the method) and a :class:`Method` subclass (a Lightning module). The base owns what
every method shares, and nothing else:

* the backbone (``model.backbone``) and, when :attr:`Method.uses_projector` (and
  :meth:`Method.wants_projector`), lightly's MoCo v2 projection head (``model.proj_*``);
* seeded ``torch.Generator`` objects (:meth:`Method.generator`) whose states are saved in the
  checkpoint, so a resumed run continues the same random streams;
* the two augmented views of a batch (:meth:`Method.views`);
* the optimiser and its learning-rate schedule (``optim``), whose length comes from
  Lightning's ``estimated_stepping_batches`` (right on any number of devices);
* the export at the end of training: ``backbone.pt`` and what the method leaves for
  evaluation (:meth:`Method.export_artifacts`, listed in ``artifacts.json``).

A subclass sets :attr:`Method.name`, :attr:`Method.Config`, :attr:`Method.tasks` and writes
``training_step``; it builds its own heads, queues and losses in ``__init__``. The losses
themselves are pure functions and modules in :mod:`contrastmix.losses`; schedules (warm-up,
weights over epochs) stay in the method.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from contrastmix._atomic import torch_save
from contrastmix.data.registry import DataBundle
from contrastmix.models.build import build_backbone, build_projector
from contrastmix.rundir import RunArtifacts, run_paths, write_artifacts
from contrastmix.train.optim import build_optimizer

__all__ = ["MethodConfig", "Method", "SeededGenerators", "require", "save_state"]


def require(ok: bool, key: str, value: Any, want: str) -> None:
    """Raise ``ValueError("`method.KEY` must be WANT, got VALUE")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"`method.{key}` must be {want}, got {value!r}")


@dataclass
class MethodConfig:
    """Base of every method's config (the recipe's ``method`` section).

    Subclasses are dataclasses that set ``name`` and add their fields; :meth:`check` holds their
    range checks and runs when a recipe loads (through ``__post_init__``), so a bad value is one
    line naming its key before anything is built.
    """

    name: str = ""
    #: Float keys for which ``.inf`` is a meaningful setting (e.g. "no limit"); every other
    #: float of a recipe must be finite (checked when it loads, before :meth:`check`).
    infinite_ok: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` naming the key of any out-of-range value (see :func:`require`)."""


class SeededGenerators:
    """Named ``torch.Generator`` objects created lazily on the device that needs them.

    Generator ``name`` is seeded with ``seed``, ``offset`` (e.g. the rank, for draws that must
    differ across ranks; ``0`` for draws that must agree) and the name. ``state_dict`` /
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


class Method(pl.LightningModule):
    """A training method: the base every file in :mod:`contrastmix.methods` extends.

    Args:
        cfg: The whole recipe as a plain dict (saved as hyper-parameters: a checkpoint names
            its method and its settings).
        data: The recipe's :class:`~contrastmix.data.registry.DataBundle`.

    Attributes:
        config: The method section as its typed :attr:`Config` (checks already run).
        backbone: The encoder that ``backbone.pt`` holds and evaluation probes.
        projector: The projection head (``None`` unless :attr:`uses_projector` and
            :meth:`wants_projector`).
        batch_augment: The bundle's on-device view augmentation (``None`` for loaders that
            yield views).
    """

    #: The recipe's ``method.name`` of this method.
    name: ClassVar[str] = ""
    #: The config dataclass of the recipe's ``method`` section.
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    #: Data tasks the method trains on (``DataBundle.task``).
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    #: Build ``self.projector`` from the recipe's ``model`` section.
    uses_projector: ClassVar[bool] = False

    def __init__(self, cfg: dict[str, Any], data: DataBundle) -> None:
        super().__init__()
        if data.task not in self.tasks:
            raise ValueError(
                f"method '{self.name}' trains on {' or '.join(self.tasks)} data; dataset "
                f"'{cfg['data']['name']}' is a {data.task} dataset"
            )
        self.save_hyperparameters({"cfg": cfg, "in_channels": data.in_channels,
                                   "num_classes": data.num_classes})
        self.cfg = cfg
        self.config: Any = OmegaConf.to_object(
            OmegaConf.merge(OmegaConf.structured(self.Config), cfg["method"])
        )
        self.seed = int(cfg.get("seed", 0))
        self.generators = SeededGenerators(self.seed)
        self.batch_augment = data.batch_augment
        self.backbone: nn.Module = self.build_backbone(data)
        self.projector: nn.Module | None = None
        if self.uses_projector and self.wants_projector():
            mc = cfg["model"]
            self.projector = build_projector(
                int(self.backbone.output_dim), mc["proj_hidden_dim"],  # type: ignore[arg-type]
                mc["proj_output_dim"], batch_norm=mc["proj_batch_norm"],
            )

    # ------------------------------------------------------------------ building
    def wants_projector(self) -> bool:
        """Whether a method that :attr:`uses_projector` builds it for this config (default
        True; a method may make it a setting, e.g. ``method.projector: false``)."""
        return True

    def build_backbone(self, data: DataBundle) -> nn.Module:
        """The recipe's backbone (override for models that hold their encoder elsewhere)."""
        mc = self.cfg["model"]
        return build_backbone(mc["backbone"], in_channels=data.in_channels, width=mc["width"],
                              cifar_stem=mc["cifar_stem"], weights=mc.get("weights"))

    def learnable_modules(self) -> list[nn.Module]:
        """The modules the optimiser trains (default: backbone and projector)."""
        return [m for m in (self.backbone, self.projector) if m is not None]

    # ------------------------------------------------------------------ forward and views
    def forward(self, x: Tensor) -> Tensor:
        """Backbone features ``[B, output_dim]`` (what probes and kNN use)."""
        return self.backbone(x)

    def generator(self, name: str, device: torch.device | str | None = None, *,
                  per_rank: bool = True) -> torch.Generator:
        """The seeded generator ``name`` on ``device`` (default: the module's device); with
        ``per_rank`` every DDP rank draws its own stream, otherwise all ranks draw the same."""
        offset = self.global_rank if per_rank else 0
        return self.generators.get(name, self.device if device is None else device, offset)

    def augment(self, x: Tensor) -> Tensor:
        """One augmented view of a raw batch (the seeded ``views`` stream of this rank)."""
        if self.batch_augment is None:
            raise ValueError("the loader yields raw tensors but the dataset has no batch_augment")
        return self.batch_augment(x, generator=self.generator("views", x.device))

    @staticmethod
    def first_view(x: Any) -> Tensor:
        """The batch a one-view method trains on: the loader's first view, or the raw batch."""
        return x[0] if isinstance(x, (list, tuple)) else x

    def views(self, x: Any) -> tuple[Tensor, Tensor]:
        """Two views of a batch: the loader's ``[view1, view2]``, or two augmentations."""
        if isinstance(x, (list, tuple)):
            return x[0], x[1]
        return self.augment(x), self.augment(x)

    def log_train_loss(self, loss: Tensor, batch_size: int) -> None:
        """Log the training loss: ``train_loss_step`` every step (this rank's value, on the
        progress bar; no collective per step) and ``train_loss_epoch``, the epoch mean over
        all ranks (reduced once, at the end of the epoch)."""
        self.log("train_loss_step", loss, on_step=True, on_epoch=False, prog_bar=True,
                 batch_size=batch_size)
        self.log("train_loss_epoch", loss, on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=batch_size)

    def total_steps(self) -> int:
        """Optimiser steps of the whole run, from Lightning (any number of devices)."""
        return max(1, int(self.trainer.estimated_stepping_batches))

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        return build_optimizer(self.cfg["optim"], self.learnable_modules(), self.total_steps(),
                               self.trainer.max_epochs or 1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["generator_states"] = self.generators.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.generators.load_state_dict(checkpoint.get("generator_states", {}))

    # ------------------------------------------------------------------ export
    def export(self, run_dir: str | Path) -> None:
        """Write ``backbone.pt`` and the method's artefacts (``artifacts.json``)."""
        run_dir = Path(run_dir)
        state = {k: v.detach().cpu() for k, v in self.backbone.state_dict().items()}
        torch_save(state, run_paths(run_dir)["backbone"])
        art = self.export_artifacts(run_dir)
        # what contrastmix.load_backbone needs beyond config.yaml to rebuild backbone.pt's module
        art.backbone = {"in_channels": int(self.hparams["in_channels"])}
        write_artifacts(run_dir, art)

    def export_artifacts(self, run_dir: Path) -> RunArtifacts:
        """Save what evaluation may use beyond the backbone; list it in the returned
        :class:`~contrastmix.rundir.RunArtifacts`. The default saves the projector."""
        art = RunArtifacts()
        if self.projector is not None:
            save_state(self.projector, run_dir / "projector.pt")
            art.projector = "projector.pt"
        return art


def save_state(module: nn.Module, path: Path) -> None:
    """``torch.save`` a module's ``state_dict`` on the CPU (readable with weights only),
    atomically (:func:`contrastmix._atomic.torch_save`)."""
    torch_save({k: v.detach().cpu() for k, v in module.state_dict().items()}, path)
