"""2-process (gloo, CPU) test: MemoryBank.add gathers the global batch in rank order."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from contrastmix.banks.memory_bank import MemoryBank

WORLD = 2
SIZE, DIM = 20, 3
# batch sizes per call and rank: unequal across ranks and calls; the ring wraps several times
BATCHES = [(3, 5), (7, 2), (1, 0), (6, 9), (11, 4)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rows(call: int, rank: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic rows whose id encodes (call, rank, row)."""
    ids = torch.tensor([call * 1000 + rank * 100 + i for i in range(n)], dtype=torch.long)
    feats = torch.stack([ids.float(), torch.full((n,), float(rank)), torch.ones(n)], dim=1)
    return feats.reshape(n, DIM), ids


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        bank = MemoryBank(SIZE, DIM)
        for call, sizes in enumerate(BATCHES):
            feats, ids = _rows(call, rank, sizes[rank])
            bank.add(feats, labels=torch.full((sizes[rank],), rank), indices=ids)
        torch.save(bank.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_hold_identical_global_fifo() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(_free_port(), tmp), nprocs=WORLD, join=True)
        states = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(WORLD)]
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    # reference: one process adding each call's rows of rank 0 then rank 1
    ref = MemoryBank(SIZE, DIM, gather_distributed=False)
    for call, sizes in enumerate(BATCHES):
        parts = [_rows(call, r, sizes[r]) for r in range(WORLD)]
        labels = torch.cat([torch.full((sizes[r],), r) for r in range(WORLD)])
        ref.add(torch.cat([p[0] for p in parts]), labels=labels,
                indices=torch.cat([p[1] for p in parts]))
    for key, value in ref.state_dict().items():
        assert torch.equal(states[0][key], value), key
    assert int(states[0]["_ptr"]) == sum(map(sum, BATCHES)) % SIZE
    # both ranks' rows of the last call are present, rank 0 before rank 1 in the ring
    last = states[0]["_indices"].tolist()
    pos0 = [last.index(4000 + i) for i in range(11)]
    pos1 = [last.index(4100 + i) for i in range(4)]
    assert [(p - pos0[0]) % SIZE for p in pos0 + pos1] == list(range(15))
