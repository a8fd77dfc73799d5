"""Optimizer and schedule shared by every training module (linear warm-up + cosine decay)."""

from __future__ import annotations

import math
from collections.abc import Iterable
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
    cfg: Any, modules: Iterable[nn.Module], steps_per_epoch: int, max_epochs: int
) -> dict[str, Any]:
    """Build ``configure_optimizers``' return value from a recipe's ``optim`` section.

    Biases and normalisation parameters get no weight decay. The schedule is stepped per
    optimisation step.
    """
    groups = _param_groups(modules, cfg.weight_decay)
    if cfg.name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    elif cfg.name == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    else:
        raise ValueError(f"unknown optimizer {cfg.name!r}; choose one of {OPTIMIZERS}")
    total = max(1, steps_per_epoch * max_epochs)
    warm = steps_per_epoch * cfg.warmup_epochs
    if cfg.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, total, warm)
        )
    elif cfg.scheduler == "constant":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, 0, warm) if s < warm else 1.0
        )
    else:
        raise ValueError(f"unknown scheduler {cfg.scheduler!r}; choose one of {SCHEDULERS}")
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
