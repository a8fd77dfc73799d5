"""Distributed helpers that work with or without ``torch.distributed`` initialised.

Lightning (or the user) initialises the process group; the core only asks whether one is
there. Gathering *with* gradient uses lightly's ``GatherLayer`` (``lightly.utils.dist``),
gathering *without* gradient is a plain ``all_gather`` for queues and banks.
:func:`shuffled_forward` is MoCo's Shuffle-BN for the key encoder.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "is_distributed", "world_size", "rank", "gather_sizes", "gather_no_grad", "gather_with_grad",
    "broadcast_buffers", "shuffle_bn_plan", "shuffled_forward",
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


def gather_sizes(n: int, device: torch.device | str) -> list[int]:
    """Every rank's ``n`` (rank order): one small ``all_gather`` and one host read."""
    mine = torch.tensor([n], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, mine)
    return [int(s) for s in torch.cat(sizes).tolist()]


def gather_no_grad(x: Tensor, counts: list[int] | None = None) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0 (rank order), without gradient.

    Ranks may hold different numbers of rows (a last, smaller batch): sizes are exchanged
    first and rows padded, so the result is exact for any batch size.

    Args:
        x: ``[n_r, ...]`` on each rank.
        counts: Every rank's ``n_r`` when the caller already has them (from
            :func:`gather_sizes`); exchanged here otherwise.

    Returns:
        ``[sum_r n_r, ...]``, identical on every rank; ``x.detach()`` when not distributed.
    """
    x = x.detach()
    if not is_distributed():
        return x
    if counts is None:
        counts = gather_sizes(x.shape[0], x.device)
    n_max = max(counts)
    if x.shape[0] < n_max:
        pad = x.new_zeros((n_max - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad], dim=0)
    out = [torch.empty_like(x) for _ in range(len(counts))]
    dist.all_gather(out, x.contiguous())
    return torch.cat([o[:c] for o, c in zip(out, counts, strict=True)], dim=0)


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


def shuffle_bn_plan(perm: Tensor, counts: list[int], rank: int) -> tuple[Tensor, Tensor]:
    """Which rows rank ``rank`` encodes under Shuffle-BN, and where its own keys come back.

    The global batch is the ranks' batches concatenated in rank order (``counts[r]`` rows
    from rank ``r``); position ``p`` of the shuffled batch holds global row ``perm[p]``, and
    rank ``r`` encodes positions ``start_r .. start_r + counts[r]`` (``start_r`` = rows of the
    ranks before it). Gathering every rank's outputs in rank order gives the encodings in
    shuffled order; the rank's own rows ``start_r + i`` sit at positions ``perm^-1[start_r + i]``.

    Args:
        perm: ``[n]`` permutation of the global batch, ``n = sum(counts)`` (the same on every
            rank).
        counts: Rows per rank.
        rank: This rank.

    Returns:
        ``(mine, keep)``: ``[counts[rank]]`` global rows to encode here, and ``[counts[rank]]``
        positions of the gathered (shuffled-order) outputs that are this rank's keys, in the
        order of its own batch.
    """
    n = int(sum(counts))
    if perm.shape != (n,):
        raise ValueError(f"`perm` must have {n} entries (sum of `counts`), got {tuple(perm.shape)}")
    start = int(sum(counts[:rank]))
    stop = start + int(counts[rank])
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n, device=perm.device, dtype=perm.dtype)
    return perm[start:stop], inverse[start:stop]


@torch.no_grad()
def shuffled_forward(module: torch.nn.Module, x: Tensor, generator: torch.Generator) -> Tensor:
    """``module(x)`` with MoCo's Shuffle-BN: BatchNorm statistics of a random part of the global
    batch instead of this rank's own samples (no gradient; for the key encoder).

    Under DDP: the inputs of every rank are gathered, shuffled with a permutation drawn from
    ``generator`` and broadcast from rank 0 (so all ranks use rank 0's), each rank encodes its
    slice of the shuffled batch (its BatchNorm layers see the statistics of that slice), the
    outputs are gathered and un-shuffled, and each rank keeps the keys of its own inputs
    (:func:`shuffle_bn_plan`). The query and its key then never share batch statistics, the
    leak that lets a BN network solve the instance task by the statistics alone (He et al.,
    2020, §3.3). Without a process group it is ``module(x)``: shuffling one batch does not
    change its statistics.

    Args:
        module: The encoder (BatchNorm in training mode, as during MoCo training).
        x: ``[b, ...]`` this rank's inputs (ranks may hold different ``b``).
        generator: Draws the permutation (only rank 0's draw is used).

    Returns:
        ``[b, ...]`` the encodings of ``x``, in its order.
    """
    if not is_distributed():
        return module(x)
    counts = gather_sizes(x.shape[0], x.device)  # once: rank r encodes counts[r] rows too
    xg = gather_no_grad(x, counts)
    perm = torch.randperm(xg.shape[0], generator=generator, device=generator.device)
    perm = perm.to(x.device)
    dist.broadcast(perm, 0)
    mine, keep = shuffle_bn_plan(perm, counts, dist.get_rank())
    return gather_no_grad(module(xg[mine]), counts)[keep]
