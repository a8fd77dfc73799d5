"""m2-mix / CLIP Lightning training under 2-process DDP (gloo, CPU).

Each rank scores its rows against both ranks' candidates (targets offset by rank * B), and the
two ranks end with identical parameters.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from contrastmix.errors import RecipeError
from contrastmix.losses.clip import clip_logits
from contrastmix.recipe import load_recipe
from contrastmix.train.pretrain import pretrain


class DumpRank(pl.Callback):
    """Each rank records the CLIP logits' shape and target offset, then its final parameters
    (BatchNorm running statistics are per rank unless ``trainer.sync_batchnorm``)."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.seen: list[tuple[int, int, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        with torch.no_grad():
            inputs = batch[0]
            img, txt = pl_module.model(inputs["image"], inputs["text"])
            logits, _, targets = clip_logits(img, txt, pl_module.model.temperature)
        self.seen.append((logits.shape[0], logits.shape[1], int(targets[0])))

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        state = {k: v.detach().clone() for k, v in pl_module.model.named_parameters()}
        torch.save({"state": state, "seen": self.seen},
                   Path(self.out) / f"rank{trainer.global_rank}.pt")


def test_two_rank_m2mix_training(tmp_path: Path) -> None:
    """m2-mix (CLIP term + m2-mix term, both gathering across ranks) under ddp_spawn."""
    cfg = load_recipe("m2mix_digits", [
        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.accelerator=cpu",
        "trainer.devices=2", "trainer.strategy=ddp_spawn", "data.batch_size=32",
        "eval.knn_every_n_epochs=0", "trainer.enable_progress_bar=false",
        "trainer.num_threads=1",
    ])
    pretrain(cfg, tmp_path / "run", extra_callbacks=[DumpRank(str(tmp_path))])
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # every step: 32 local rows against 64 candidates; rank r's positives start at r * 32
    assert r0["seen"] == [(32, 64, 0)] * 2
    assert r1["seen"] == [(32, 64, 32)] * 2
    for k, v in r0["state"].items():
        torch.testing.assert_close(v, r1["state"][k], rtol=0, atol=0)
    assert any(not torch.equal(v, torch.zeros_like(v)) for v in r0["state"].values())


def test_sync_batchnorm_on_cpu_is_a_clear_error(tmp_path: Path) -> None:
    cfg = load_recipe("clip_digits", ["trainer.accelerator=cpu", "trainer.sync_batchnorm=true"])
    with pytest.raises(RecipeError, match="sync_batchnorm"):
        pretrain(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
