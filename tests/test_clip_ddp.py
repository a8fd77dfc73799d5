"""Two-process (gloo) checks that the multimodal losses see all ranks' negatives.

For each loss, rank ``r`` holds rows ``[r*B, (r+1)*B)`` of a global batch. With
``gather_distributed=True`` the mean of the per-rank losses must equal the single-process loss
on the concatenated batch, and the gradients must match that loss's:

- input gradients: the gather's backward sums the gathered copies' gradients over ranks, so the
  gradient reaching rank r's rows is ``world_size * dL_full/dx_r`` (the sum over ranks of the
  local losses is ``world_size * L_full``);
- parameter gradients: DDP averages them over ranks (all-reduce sum / world size, done here by
  hand: importing ``DistributedDataParallel`` or ``torch.testing.assert_close`` under a process
  group pulls in torch.compile machinery and costs ~10 s per process), which cancels that factor,
  so the averaged ``param.grad`` equals the single-process full-batch gradient exactly.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

from contrastmix.losses.clip import clip_loss
from contrastmix.losses.m2mix import M2MixLoss, m2mix_term, unimodal_mix_loss
from contrastmix.losses.m3col import m3co_loss, random_derangement, soft_clip_loss

WORLD = 2
B = 4  # rows per rank
D_IN, D = 6, 5


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(WORLD * B, D, generator=g), torch.randn(WORLD * B, D, generator=g)


def _perms() -> tuple[Tensor, Tensor, Tensor]:
    """Per-rank derangements, their block-diagonal global version, and global betas."""
    g = torch.Generator().manual_seed(1)
    local = torch.stack([random_derangement(B, generator=g) for _ in range(WORLD)])
    full = torch.cat([local[r] + r * B for r in range(WORLD)])
    beta = torch.rand(WORLD * B, generator=g)
    beta[::3] = 1.0
    return local, full, beta


def _losses() -> dict[str, Callable[[Tensor, Tensor, slice, bool], Tensor]]:
    """Each entry maps (x, y, rows, gather) -> loss; x, y are the raw rows given."""
    local_perm, full_perm, beta = _perms()

    def perm_beta(rows: slice, gather: bool) -> tuple[Tensor, Tensor]:
        if gather:
            r = rows.start // B
            return beta[rows], local_perm[r]
        return beta, full_perm

    def n(x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1)

    return {
        "clip": lambda x, y, rows, gather: clip_loss(n(x), n(y), 0.1, gather_distributed=gather),
        "m2mix": lambda x, y, rows, gather: m2mix_term(n(x), n(y), 0.3, gather_distributed=gather),
        "m2mix_row_lam": lambda x, y, rows, gather: m2mix_term(
            n(x),
            n(y),
            torch.linspace(0.1, 0.9, WORLD * B)[rows if gather else slice(None)],
            gather_distributed=gather,
        ),
        "softclip": lambda x, y, rows, gather: soft_clip_loss(x, y, gather_distributed=gather),
        "m3co": lambda x, y, rows, gather: m3co_loss(
            x, y, *perm_beta(rows, gather), temperature=0.1, gather_distributed=gather
        ),
        "vmix": lambda x, y, rows, gather: unimodal_mix_loss(
            n(x), n(y), 0.4, gather_distributed=gather
        ),
    }


def _worker(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        _check_all(rank)
    finally:
        dist.destroy_process_group()


def _close(a: Tensor, b: Tensor, what: str, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    if not torch.allclose(a, b, atol=atol, rtol=rtol):
        raise AssertionError(f"{what}: max |diff| = {float((a - b).abs().max()):.3g}\n{a}\n{b}")


def _check_all(rank: int) -> None:
    x_full, y_full = _data()
    rows = slice(rank * B, (rank + 1) * B)
    for name, fn in _losses().items():
        if name == "vmix":
            continue  # partners are local: equals the full loss only with block partners
        # Reference on the whole batch, no gathering.
        xf = x_full.clone().requires_grad_(True)
        yf = y_full.clone().requires_grad_(True)
        ref = fn(xf, yf, slice(None), False)
        ref.backward()
        # Distributed: local rows, gathered candidates.
        x = x_full[rows].clone().requires_grad_(True)
        y = y_full[rows].clone().requires_grad_(True)
        loss = fn(x, y, rows, True)
        loss.backward()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        mean /= WORLD
        _close(mean, ref.detach(), f"{name}: loss")
        for local_grad, full_grad in ((x.grad, xf.grad), (y.grad, yf.grad)):
            parts = [torch.empty_like(local_grad) for _ in range(WORLD)]
            dist.all_gather(parts, local_grad)
            _close(torch.cat(parts) / WORLD, full_grad, f"{name}: input gradient")
    _check_ddp_parameter_grads(rank, x_full, y_full, rows)
    _check_lambda_broadcast(rank)


def _check_ddp_parameter_grads(rank: int, x_full: Tensor, y_full: Tensor, rows: slice) -> None:
    torch.manual_seed(0)
    tower = nn.Linear(D, D)
    ref_tower = nn.Linear(D, D)
    ref_tower.load_state_dict(tower.state_dict())
    mod = M2MixLoss(temperature=0.1, weight=0.5)
    loss = mod(F.normalize(tower(x_full[rows]), dim=-1), F.normalize(y_full[rows], dim=-1), lam=0.3)
    loss.backward()
    for p in tower.parameters():  # DDP's gradient averaging
        dist.all_reduce(p.grad)
        p.grad /= WORLD
    single = M2MixLoss(temperature=0.1, weight=0.5, gather_distributed=False)
    ref = single(F.normalize(ref_tower(x_full), dim=-1), F.normalize(y_full, dim=-1), lam=0.3)
    ref.backward()
    for p, q in zip(tower.parameters(), ref_tower.parameters(), strict=True):
        _close(p.grad, q.grad, "DDP-averaged parameter gradient")


def _check_lambda_broadcast(rank: int) -> None:
    mod = M2MixLoss()
    lam = mod.sample_lam(torch.Generator().manual_seed(100 + rank))
    lams = [None] * WORLD
    dist.all_gather_object(lams, lam)
    assert lams[0] == lams[1], lams
    # Every rank uses rank 0's draw (seed 100), whatever its own generator.
    local = M2MixLoss(gather_distributed=False).sample_lam(torch.Generator().manual_seed(100))
    assert lam == local


@pytest.mark.slow
def test_two_process_losses_match_single_process() -> None:
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    mp.spawn(_worker, args=(_free_port(),), nprocs=WORLD, join=True)


def test_without_process_group_gather_is_a_no_op() -> None:
    x_full, y_full = _data()
    for name, fn in _losses().items():
        a = fn(x_full, y_full, slice(None), False)
        if name in ("m3co",):
            continue  # the gathered variant takes per-rank permutations
        b = fn(x_full, y_full, slice(0, WORLD * B), True)
        torch.testing.assert_close(a, b, msg=name)
