"""Optimizer and schedule shared by every training module (linear warm-up + cosine decay)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from contrastmix.config import OPTIMIZERS, SCHEDULERS

__all__ = ["build_optimizer", "warmup_cosine"]


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * t))


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

    Biases and normalisation parameters get no weight decay. The schedule is stepped per
    optimisation step: ``optim.warmup_epochs`` of linear warm-up (as a share of the run's
    ``total_steps``, so that it is right on any number of devices), then cosine decay to 0 at
    ``total_steps`` (or a constant rate).

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
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
    total = max(1, int(total_steps))
    warm = int(round(total * optim["warmup_epochs"] / max(1, max_epochs)))
    if optim["scheduler"] == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, total, warm)
        )
    elif optim["scheduler"] == "constant":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, 0, warm) if s < warm else 1.0
        )
    else:
        raise ValueError(
            f"unknown scheduler {optim['scheduler']!r}; choose one of {SCHEDULERS}")
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
