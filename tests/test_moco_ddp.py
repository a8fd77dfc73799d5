"""MoCo under 2-process DDP (gloo, CPU): both ranks hold identical queues with both ranks' keys."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from contrastmix.recipe import load_recipe
from contrastmix.train.pretrain import pretrain


class DumpQueue(pl.Callback):
    """Each rank writes its queue state and the sample ids it trained on."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.seen: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.seen += batch[2].tolist()

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        state = {k: v.clone() for k, v in pl_module.queue.state_dict().items()}
        torch.save({"queue": state, "seen": self.seen},
                   Path(self.out) / f"rank{trainer.global_rank}.pt")


def test_two_rank_queues_are_identical_and_global(tmp_path: Path) -> None:
    cfg = load_recipe("moco_mnist1d", [
        "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.accelerator=cpu",
        "trainer.devices=2", "trainer.strategy=ddp_spawn", "data.batch_size=48",
        "method.queue_size=200", "eval.knn_every_n_epochs=0", "trainer.enable_progress_bar=false",
        "trainer.num_threads=1", "model.width=8",
    ])
    pretrain(cfg, tmp_path / "run", extra_callbacks=[DumpQueue(str(tmp_path))])
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0["queue"]:
        torch.testing.assert_close(r0["queue"][k], r1["queue"][k], rtol=0, atol=0)
    q = r0["queue"]
    # 3 steps x 2 ranks x 48 keys = 288 > 200 slots: the ring is full and has wrapped
    assert int(q["_filled"]) == 200 and int(q["_ptr"]) == 288 % 200
    ids = set(q["_indices"].tolist())
    # the last 200 enqueued keys: both ranks' samples are there
    assert ids & set(r0["seen"]) and ids & set(r1["seen"])
    assert not set(r0["seen"]) & set(r1["seen"])  # DistributedSampler split the data
    # storage order = rank order within each step: the newest step's block is rank 0 then rank 1
    last_block = torch.cat([q["_indices"][88 - 96 + 200:], q["_indices"][:88]])
    assert last_block[:48].tolist() == r0["seen"][-48:]
    assert last_block[48:].tolist() == r1["seen"][-48:]
