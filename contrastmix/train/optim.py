"""Optimizer and schedule shared by every training module.

The schedule is lightly's :class:`~lightly.utils.scheduler.CosineWarmupScheduler` (linear
warm-up, then cosine decay), stepped once per optimisation step; the optimisers are torch's SGD
and AdamW and lightly's :class:`~lightly.utils.lars.LARS` (layer-wise adaptive rate scaling for
large batches, You et al., 2017), stepped without host synchronisation (:class:`SyncFreeLARS`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from lightly.utils.lars import LARS
from lightly.utils.scheduler import CosineWarmupScheduler
from torch import nn

from contrastmix.config import OPTIMIZERS, SCHEDULERS

__all__ = ["build_optimizer", "build_scheduler", "warmup_cosine", "SyncFreeLARS"]


class SyncFreeLARS(LARS):
    """lightly's :class:`~lightly.utils.lars.LARS` with the same update, computed branchlessly.

    lightly's ``step`` tests ``p_norm != 0 and g_norm != 0`` in Python for every decayed
    parameter: two reads of device values, i.e. two host synchronisations per parameter and
    step on a GPU. Here the test selects with ``torch.where`` (the rescaled, decayed gradient
    where both norms are non-zero, the plain gradient elsewhere), which gives the same values.
    """

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            weight_decay, momentum = group["weight_decay"], group["momentum"]
            dampening, nesterov = group["dampening"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if weight_decay != 0:
                    p_norm, g_norm = torch.norm(p.data), torch.norm(p.grad.data)
                    lars_lr = p_norm / (g_norm + p_norm * weight_decay + group["eps"])
                    lars_lr *= group["trust_coefficient"]
                    scaled = d_p.add(p, alpha=weight_decay)
                    scaled *= lars_lr
                    d_p = torch.where((p_norm != 0) & (g_norm != 0), scaled, d_p)
                if momentum != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        buf = state["momentum_buffer"] = torch.clone(d_p).detach()
                    else:
                        buf = state["momentum_buffer"]
                        buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
                    d_p = d_p.add(buf, alpha=momentum) if nesterov else buf
                p.add_(d_p, alpha=-group["lr"])
        return loss


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Closed form of the schedule's learning-rate factor at optimiser step ``step``.

    Linear warm-up ``(step + 1) / warmup`` over the first ``warmup`` steps, then cosine decay
    ``0.5 * (1 + cos(pi * (step - warmup) / (total - warmup)))``, which reaches 0 at step
    ``total`` (one past the run's last step, so that the last step still trains).
    :func:`build_scheduler` gives exactly these values; this function is their reference.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * t))


class _RunSchedule(CosineWarmupScheduler):
    """lightly's scheduler, always sized from the run being trained.

    ``CosineWarmupScheduler`` keeps its length in its state, so a checkpoint would restore the
    old length when a run resumes with more epochs; here only the step counter is restored.
    """

    _SIZING = ("warmup_epochs", "max_epochs", "start_value", "end_value", "period",
               "warmup_start_value", "warmup_end_value")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        kept = {k: getattr(self, k) for k in self._SIZING}
        super().load_state_dict(state_dict)
        for k, v in kept.items():
            setattr(self, k, v)


def build_scheduler(
    opt: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-step learning-rate schedule: lightly's ``CosineWarmupScheduler``.

    Args:
        opt: The optimiser.
        kind: ``"cosine"`` (warm-up, then cosine decay: factor :func:`warmup_cosine`) or
            ``"constant"`` (warm-up, then the base rate).
        total_steps: Optimiser steps of the run (``>= 1``).
        warmup_steps: Steps of linear warm-up (``>= 0``; may exceed ``total_steps``, then the
            whole run warms up).

    lightly's cosine reaches its end value at its ``max_epochs - 1``; it is given
    ``max(total_steps, warmup_steps) + 1`` so that the decay ends at ``total_steps``, one past
    the last step (as :func:`warmup_cosine`), and a warm-up longer than the run is allowed.
    """
    if kind not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {kind!r}; choose one of {SCHEDULERS}")
    total, warm = max(1, int(total_steps)), max(0, int(warmup_steps))
    return _RunSchedule(
        opt, warmup_epochs=warm, max_epochs=max(total, warm) + 1, start_value=1.0,
        end_value=0.0 if kind == "cosine" else 1.0, warmup_start_value=0.0,
    )


def _param_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for m in modules:
        for name, p in m.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    optim: Mapping[str, Any], modules: Iterable[nn.Module], total_steps: int, max_epochs: int
) -> dict[str, Any]:
    """Build ``configure_optimizers``' return value from a recipe's ``optim`` section.

    Biases and normalisation parameters get no weight decay (under LARS they are also not
    rescaled layer-wise: lightly's LARS adapts only parameters with weight decay). The
    schedule (:func:`build_scheduler`) is stepped per optimisation step: ``optim.warmup_epochs``
    of linear warm-up (as a share of the run's ``total_steps``, so that it is right on any
    number of devices), then cosine decay to 0 at ``total_steps`` (or a constant rate).

    Args:
        optim: The recipe's ``optim`` section (a mapping).
        modules: The modules to train.
        total_steps: Optimiser steps of the whole run (Lightning's
            ``trainer.estimated_stepping_batches``).
        max_epochs: Epochs of the run.
    """
    groups = _param_groups(modules, optim["weight_decay"])
    name, lr = optim["name"], optim["lr"]
    if name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=lr, momentum=optim["momentum"])
    elif name == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr)
    elif name == "lars":
        opt = SyncFreeLARS(groups, lr=lr, momentum=optim["momentum"],
                           trust_coefficient=optim.get("trust_coefficient", 0.001))
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
    total = max(1, int(total_steps))
    warm = int(round(total * optim["warmup_epochs"] / max(1, max_epochs)))
    sched = build_scheduler(opt, optim["scheduler"], total, warm)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
