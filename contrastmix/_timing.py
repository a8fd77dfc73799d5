"""Wall-clock timing of device work, for the scripts under ``benchmarks/`` (one copy)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

__all__ = ["synchronize", "time_calls"]


def synchronize(device: str | torch.device) -> None:
    """Wait for the queued work of a CUDA ``device``; nothing to wait for elsewhere."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_calls(fn: Callable[[], object], device: str | torch.device, repeats: int,
               warmup: int = 2) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls, each
    call timed until ``device`` has finished it."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        out.append(time.perf_counter() - t0)
    return out
