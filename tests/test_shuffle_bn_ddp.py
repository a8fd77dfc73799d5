"""Shuffle-BN (``method.shuffle_bn``) under 2-process DDP (gloo, CPU).

Each rank's keys from :func:`contrastmix.distributed.shuffled_forward` equal the definition:
rank 0's permutation of the global batch, each rank's slice encoded with that slice's BatchNorm
statistics, un-shuffled back to the rank's own rows (unequal batch sizes). The fast twins (the
same plan with hand-made collectives; the one-process no-op) are in tests/test_claim_options.py.
Kept out of that file so that the spawned workers import little.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from contrastmix.distributed import shuffled_forward

COUNTS = [5, 7]


def _bn_encoder() -> torch.nn.Module:
    torch.manual_seed(5)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5),
                               torch.nn.ReLU(), torch.nn.Linear(5, 4)).train()


def _rank_inputs(counts: list[int]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return [torch.randn(c, 6, generator=g) + 3.0 * r for r, c in enumerate(counts)]


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    tdist.init_process_group("gloo", rank=rank, world_size=len(COUNTS))
    try:
        x = _rank_inputs(COUNTS)[rank]
        # rank 1's generator differs: rank 0's permutation must be the one used
        keys = shuffled_forward(_bn_encoder(), x, torch.Generator().manual_seed(21 + rank))
        torch.save(keys, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        tdist.destroy_process_group()


@pytest.mark.slow
def test_shuffle_bn_under_two_process_gloo_ddp(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=len(COUNTS), join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(len(COUNTS))]
    # the definition: rank r encodes its slice of the shuffled global batch with that slice's
    # statistics; global row perm[p] gets the encoding at shuffled position p
    perm = torch.randperm(sum(COUNTS), generator=torch.Generator().manual_seed(21))
    module, xs = _bn_encoder(), _rank_inputs(COUNTS)
    shuffled = torch.cat(xs)[perm]
    enc = torch.empty(sum(COUNTS), 4)
    start = 0
    with torch.no_grad():
        for c in COUNTS:
            enc[perm[start:start + c]] = module(shuffled[start:start + c])
            start += c
        for r, ref in enumerate(torch.split(enc, COUNTS)):
            torch.testing.assert_close(got[r], ref)
            # per-rank statistics would give other keys
            assert not torch.allclose(got[r], module(xs[r]), atol=1e-3)
