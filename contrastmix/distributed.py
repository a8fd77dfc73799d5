"""Distributed helpers that work with or without ``torch.distributed`` initialised.

Lightning (or the user) initialises the process group; the core only asks whether one is
there. Gathering *with* gradient uses lightly's ``GatherLayer`` (``lightly.utils.dist``),
gathering *without* gradient is a plain ``all_gather`` for queues and banks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "is_distributed", "world_size", "rank", "gather_no_grad", "gather_with_grad",
    "broadcast_buffers",
]


def is_distributed() -> bool:
    """True when a process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Rank of this process (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0 (rank order), without gradient.

    Ranks may hold different numbers of rows (a last, smaller batch): sizes are exchanged
    first and rows padded, so the result is exact for any batch size.

    Args:
        x: ``[n_r, ...]`` on each rank.

    Returns:
        ``[sum_r n_r, ...]``, identical on every rank; ``x.detach()`` when not distributed.
    """
    x = x.detach()
    if not is_distributed():
        return x
    ws = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(ws)]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    n_max = max(counts)
    if x.shape[0] < n_max:
        pad = x.new_zeros((n_max - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad], dim=0)
    out = [torch.empty_like(x) for _ in range(ws)]
    dist.all_gather(out, x.contiguous())
    return torch.cat([o[:c] for o, c in zip(out, counts, strict=True)], dim=0)


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy every buffer of ``module`` (e.g. BatchNorm running statistics) from rank ``src``.

    DDP does this before each forward of the wrapped model; a forward outside the wrapper (an
    evaluation of the bare backbone) must do it itself, or each rank uses the statistics of its
    own last batches. A no-op when not distributed.
    """
    if not is_distributed():
        return
    for buf in module.buffers():
        dist.broadcast(buf, src)


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0, keeping the gradient to every rank's part.

    Uses lightly's ``GatherLayer`` (equal batch sizes on every rank, as DDP's sampler gives).

    Args:
        x: ``[n, ...]`` on each rank.

    Returns:
        ``[world_size * n, ...]``; ``x`` itself when not distributed.
    """
    if not is_distributed():
        return x
    from lightly.utils.dist import gather

    return torch.cat(gather(x), dim=0)
