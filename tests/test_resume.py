"""An interrupted run resumes from its last checkpoint with the queue and pointer intact."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from contrastmix.recipe import load_recipe
from contrastmix.train.pretrain import pretrain

OVERRIDES = [
    "trainer.max_epochs=2", "trainer.limit_train_batches=3", "method.queue_size=320",
    "data.batch_size=128", "eval.knn_every_n_epochs=0", "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]


class Crash(pl.Callback):
    """Simulate a crash after ``at_step`` optimiser steps, remembering the queue at that point."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step
        self.queue: dict[str, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.at_step:
            self.queue = {k: v.clone() for k, v in pl_module.queue.state_dict().items()}
            raise RuntimeError("simulated crash")


class Restored(pl.Callback):
    """Record the queue as it stands when the resumed run starts."""

    def __init__(self) -> None:
        self.queue: dict[str, torch.Tensor] = {}
        self.start_step = -1

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.queue = {k: v.clone() for k, v in pl_module.queue.state_dict().items()}
        self.start_step = trainer.global_step


def test_interrupted_run_resumes_with_its_queue(tmp_path: Path) -> None:
    cfg = load_recipe("moco_mnist1d", OVERRIDES)
    crash = Crash(at_step=4)  # mid-way through epoch 2 (3 steps per epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(cfg, tmp_path, extra_callbacks=[crash])
    ckpt_path = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt_path.is_file() and not (tmp_path / "backbone.pt").exists()

    # The checkpoint written at the crash holds exactly the queue of that moment.
    state = torch.load(ckpt_path, weights_only=True)["state_dict"]
    saved = {k.removeprefix("queue."): v for k, v in state.items() if k.startswith("queue.")}
    assert set(saved) == set(crash.queue)
    for k in saved:
        torch.testing.assert_close(saved[k], crash.queue[k], rtol=0, atol=0)
    # 4 steps x 128 keys in a 320-slot ring: full, pointer at 512 mod 320
    assert int(saved["_ptr"]) == 512 % 320 and int(saved["_filled"]) == 320

    restored = Restored()
    pretrain(cfg, tmp_path, resume=True, extra_callbacks=[restored])
    assert restored.start_step == 4
    for k in saved:
        torch.testing.assert_close(restored.queue[k], saved[k], rtol=0, atol=0)
    final = torch.load(ckpt_path, weights_only=True)
    assert final["global_step"] == 6  # nothing lost, nothing repeated: 2 epochs x 3 steps
    assert (tmp_path / "backbone.pt").is_file()
    # the metric rows of both segments are merged (step 3's row was still to be logged when
    # the simulated crash hit, inside on_train_batch_end of that step)
    import csv

    with (tmp_path / "metrics.csv").open() as fh:
        logged = {int(r["step"]) for r in csv.DictReader(fh) if r.get("train_loss_step")}
    assert logged >= {0, 1, 2, 4, 5}


class FailBeforeTraining(pl.Callback):
    """Raise while the trainer sets up, before any checkpoint is restored or step taken."""

    def setup(self, trainer, pl_module, stage) -> None:  # noqa: ANN001
        raise RuntimeError("failed before training")


def test_failed_resume_never_overwrites_the_checkpoint(tmp_path: Path) -> None:
    from contrastmix.errors import CheckpointError

    cfg = load_recipe("moco_mnist1d", OVERRIDES)
    pretrain(cfg, tmp_path)
    ckpt_path = tmp_path / "checkpoints" / "last.ckpt"
    before = ckpt_path.read_bytes()
    # a recipe whose queue or model differs from the checkpoint's: refused, named, up front
    other = load_recipe("moco_mnist1d", [*OVERRIDES, "method.queue_size=256", "model.width=16",
                                         "optim.lr=0.5"])
    with pytest.raises(CheckpointError, match=r"method.queue_size: 320 -> 256; model.width: "
                                              r"32 -> 16; optim.lr: 0.06 -> 0.5"):
        pretrain(other, tmp_path, resume=True)
    # an exception before training starts: the interrupt checkpoint is not written (it would
    # hold an untrained model), so the run's checkpoint survives byte for byte
    more = load_recipe("moco_mnist1d", [*OVERRIDES, "trainer.max_epochs=3"])
    with pytest.raises(RuntimeError, match="failed before training"):
        pretrain(more, tmp_path, resume=True, extra_callbacks=[FailBeforeTraining()])
    assert ckpt_path.read_bytes() == before
    assert not ckpt_path.with_name("last.ckpt.tmp").exists()
    # and the run still resumes (trainer settings and the loader's workers may change)
    more = load_recipe("moco_mnist1d", [*OVERRIDES, "trainer.max_epochs=3",
                                        "data.eval_batch_size=512"])
    pretrain(more, tmp_path, resume=True)
    assert torch.load(ckpt_path, weights_only=True)["global_step"] == 9
