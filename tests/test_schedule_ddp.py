"""Schedules and the kNN monitor under 2-process DDP (gloo, CPU).

One tiny MoCo run on 2 ranks proves that the learning-rate warm-up + cosine and the MoCo momentum
ramp are sized from the per-rank number of steps (Lightning's ``estimated_stepping_batches``), and
that the online kNN monitor, which extracts one shard per rank and gathers, gives the features,
in dataset order, and the accuracy of a single process on the same weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Subset

from contrastmix import distributed as dist
from contrastmix.data.registry import build_data
from contrastmix.eval.knn import knn_predict
from contrastmix.eval.probe import extract_features
from contrastmix.recipe import load_recipe
from contrastmix.runs import load_backbone
from contrastmix.train.callbacks import OnlineKNN
from contrastmix.train.optim import warmup_cosine
from contrastmix.train.pretrain import pretrain

N_TRAIN, N_TEST, BATCH, EPOCHS, LIMIT = 4000, 1000, 64, 3, 0.1


class Record(pl.Callback):
    """Each rank writes: (global_step, lr) before every optimiser step, the momentum every EMA
    update used, the schedule length, the logged ``knn_acc`` and the monitor's features."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.lrs: list[tuple[int, float]] = []
        self.momenta: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        enc = pl_module.key_encoder
        update = enc.update

        def recording_update(online, momentum=None):  # noqa: ANN001, ANN202
            self.momenta.append(float(momentum))
            return update(online, momentum)

        enc.update = recording_update

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.lrs.append((trainer.global_step, trainer.optimizers[0].param_groups[0]["lr"]))

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        knn = next(c for c in trainer.callbacks if isinstance(c, OnlineKNN))
        x, y = knn.features(knn.test, pl_module)
        # uneven shards (999 = 500 + 499)
        xo, yo = knn.features(Subset(knn.test, range(N_TEST - 1)), pl_module)
        torch.save({
            "lrs": self.lrs, "momenta": self.momenta, "total": pl_module.total_steps(),
            "world": dist.world_size(), "knn_acc": float(trainer.callback_metrics["knn_acc"]),
            "x": x, "y": y, "xo": xo, "yo": yo,
        }, Path(self.out) / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_two_rank_schedules_cover_the_run_and_knn_matches_one_process(tmp_path: Path) -> None:
    cfg = load_recipe("moco_mnist1d", [
        f"trainer.max_epochs={EPOCHS}", f"trainer.limit_train_batches={LIMIT}",
        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp_spawn",
        f"data.batch_size={BATCH}", "optim.warmup_epochs=1", "method.queue_size=256",
        "method.end_momentum=1.0", f"eval.knn_every_n_epochs={EPOCHS}",
        "trainer.enable_progress_bar=false", "trainer.num_threads=1", "model.width=8",
    ])
    run = pretrain(cfg, tmp_path / "run", extra_callbacks=[Record(str(tmp_path))])
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2

    # --- schedule length: per-rank batches (DistributedSampler halves the data), not 1 process's
    single = int(N_TRAIN // BATCH * LIMIT)                 # 62 batches -> 6
    per_rank = int(math.ceil(N_TRAIN / 2) // BATCH * LIMIT)  # 31 batches -> 3
    assert (single, per_rank) == (6, 3)
    total, warm = per_rank * EPOCHS, per_rank * 1
    assert r0["total"] == r1["total"] == total
    steps = [s for s, _ in r0["lrs"]]
    assert steps == list(range(total))                     # the run has exactly `total` steps
    base = cfg.optim.lr
    lrs = [lr for _, lr in r0["lrs"]]
    want = [base * warmup_cosine(s, total, warm) for s in range(total)]
    assert lrs == pytest.approx(want, rel=1e-9, abs=1e-12)
    # warm-up ends after exactly per_rank * warmup_epochs steps: linear up to the base rate ...
    assert lrs[:warm] == pytest.approx([base * (s + 1) / warm for s in range(warm)], rel=1e-9)
    # ... then the cosine decays and its last step is the last step of the run
    assert all(a > b for a, b in zip(lrs[warm:], lrs[warm + 1:], strict=False))
    assert lrs[-1] == pytest.approx(base * warmup_cosine(total - 1, total, warm), rel=1e-9)
    assert warmup_cosine(total, total, warm) == 0.0
    assert [lr for _, lr in r1["lrs"]] == lrs
    # MoCo's momentum ramp uses the same total: it reaches end_momentum at the last step
    assert len(r0["momenta"]) == total
    assert r0["momenta"][0] == pytest.approx(0.99)
    assert r0["momenta"][-1] == pytest.approx(1.0, abs=1e-12)
    assert r0["momenta"][-2] < 1.0
    assert r1["momenta"] == r0["momenta"]

    # --- kNN monitor: sharded features = one process's features, in dataset order
    data = build_data(cfg.data)
    net = load_backbone(run, cfg, data.in_channels)

    def feats(ds):  # noqa: ANN001, ANN202
        return extract_features(net, DataLoader(ds, batch_size=256, shuffle=False), "cpu")

    xtr, ytr = feats(data.train)
    xte, yte = feats(data.test)
    for r in (r0, r1):
        assert torch.equal(r["y"], yte)
        torch.testing.assert_close(r["x"], xte, rtol=1e-4, atol=1e-5)
        assert torch.equal(r["yo"], yte[:-1])
        torch.testing.assert_close(r["xo"], xte[:-1], rtol=1e-4, atol=1e-5)
    pred = knn_predict(xtr, ytr, xte, k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature)
    acc = (pred == yte).float().mean().item()
    assert r0["knn_acc"] == r1["knn_acc"] == pytest.approx(acc, abs=1e-6)
