"""Shuffle-BN (``method.shuffle_bn``) under 2-process DDP (gloo, CPU).

Each rank's keys from :func:`contrastmix.distributed.shuffled_forward` equal the definition:
rank 0's permutation of the global batch, each rank's slice encoded with that slice's BatchNorm
statistics, un-shuffled back to the rank's own rows (unequal batch sizes). The fast twins (the
same plan with hand-made collectives; the one-process no-op) share the definition below. The
file imports little, so that the spawned workers start fast.
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


def _shuffle_bn_reference(module: torch.nn.Module, xs: list[torch.Tensor], perm: torch.Tensor
                          ) -> list[torch.Tensor]:
    """Each rank's keys under Shuffle-BN, by definition: rank r's slice of the shuffled global
    batch is encoded with that slice's BatchNorm statistics; row perm[p] of the global batch
    gets the encoding at shuffled position p."""
    counts = [len(x) for x in xs]
    xg = torch.cat(xs)
    shuffled = xg[perm]
    enc = torch.empty(len(xg), 4)
    start = 0
    with torch.no_grad():
        for c in counts:
            enc[perm[start:start + c]] = module(shuffled[start:start + c])
            start += c
    return list(torch.split(enc, counts))


def test_shuffle_bn_plan_simulated_ranks_match_the_definition() -> None:
    """Fast twin of the 2-process test: the plan that shuffled_forward follows, with the
    collectives done by hand, gives the keys of the definition (unequal batches too), and the
    keys differ from per-rank BatchNorm (so the shuffle matters)."""
    from contrastmix.distributed import shuffle_bn_plan

    module = _bn_encoder()
    for counts in ([5, 5], [4, 7], [3, 2, 6]):
        xs = _rank_inputs(counts)
        perm = torch.randperm(sum(counts), generator=torch.Generator().manual_seed(2))
        xg = torch.cat(xs)
        with torch.no_grad():
            plans = [shuffle_bn_plan(perm, counts, r) for r in range(len(counts))]
            gathered = torch.cat([module(xg[mine]) for mine, _ in plans])  # the all_gather
            ref = _shuffle_bn_reference(module, xs, perm)
            for r, (_, keep) in enumerate(plans):
                torch.testing.assert_close(gathered[keep], ref[r])
                assert not torch.allclose(gathered[keep], module(xs[r]), atol=1e-3)
    with pytest.raises(ValueError, match="`perm` must have 10 entries"):
        shuffle_bn_plan(torch.arange(9), [5, 5], 0)


def test_shuffle_bn_is_plain_forward_on_one_process() -> None:
    module, x = _bn_encoder(), _rank_inputs([8])[0]
    with torch.no_grad():
        want = module(x)
    assert torch.equal(shuffled_forward(module, x, torch.Generator().manual_seed(0)), want)


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
    with torch.no_grad():
        for r, ref in enumerate(_shuffle_bn_reference(module, xs, perm)):
            torch.testing.assert_close(got[r], ref)
            # per-rank statistics would give other keys
            assert not torch.allclose(got[r], module(xs[r]), atol=1e-3)
