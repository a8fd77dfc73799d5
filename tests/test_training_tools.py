"""Training tools a user expects: lightly's warm-up + cosine schedule, LARS, loggers chosen in
the recipe, progress bars on a terminal only (issue 15, item 4)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from lightly.utils.lars import LARS
from lightly.utils.scheduler import CosineWarmupScheduler
from torch import nn

from contrastmix import config
from contrastmix._progress import progress, progress_enabled
from contrastmix.errors import RecipeError
from contrastmix.recipe import load_recipe
from contrastmix.train.optim import build_optimizer, build_scheduler, warmup_cosine

TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "data.batch_size=64",
        "eval.knn_every_n_epochs=0", "model.width=4", "method.queue_size=128",
        "trainer.log_every_n_steps=1", "trainer.num_threads=1", "trainer.accelerator=cpu"]


def _reference(step: int, total: int, warm: int) -> float:
    """The schedule written out: (s + 1) / warm, then 0.5 (1 + cos(pi (s - warm) / (total -
    warm)))."""
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))


def _lrs(kind: str, total: int, warm: int, base: float = 0.3) -> list[float]:
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    sched = build_scheduler(opt, kind, total, warm)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"] / base)
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize(("total", "warm"), [(20, 5), (7, 0), (1, 0), (3, 1)])
def test_schedule_is_lightlys_with_the_closed_form_values(total: int, warm: int) -> None:
    p = nn.Parameter(torch.zeros(1))
    assert isinstance(build_scheduler(torch.optim.SGD([p], lr=1.0), "cosine", 4, 1),
                      CosineWarmupScheduler)
    lrs = _lrs("cosine", total, warm)
    assert lrs == pytest.approx([_reference(s, total, warm) for s in range(total)], abs=1e-12)
    assert lrs == pytest.approx([warmup_cosine(s, total, warm) for s in range(total)], abs=1e-12)
    if total == 20:  # a few points by hand: half-way up, the top, the middle of the decay
        assert lrs[1] == pytest.approx(0.4)
        assert lrs[4] == pytest.approx(1.0)
        assert lrs[5] == pytest.approx(1.0)  # the first cosine step is the full rate
        assert lrs[5 + 15 // 2] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 15)))
        assert 0 < lrs[-1] < 0.02  # the last step still trains; 0 is reached at step 20
    assert warmup_cosine(total, total, warm) == pytest.approx(0.0, abs=1e-12) or total <= warm


def test_constant_schedule_and_a_warm_up_longer_than_the_run() -> None:
    assert _lrs("constant", 6, 2) == pytest.approx([0.5, 1, 1, 1, 1, 1])
    # recipes warm up for 5 epochs; a 1-epoch test run is all warm-up (lightly alone refuses)
    assert _lrs("cosine", 3, 5) == pytest.approx([0.2, 0.4, 0.6])
    with pytest.raises(ValueError, match="unknown scheduler 'step'"):
        build_scheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), "step", 3, 0)


def test_a_resumed_schedule_is_sized_from_the_new_run() -> None:
    # a checkpoint of a 10-step run resumed with 20 steps: the step counter comes back, the
    # length does not (lightly keeps its length in the scheduler's state)
    p = nn.Parameter(torch.zeros(1))
    old = build_scheduler(torch.optim.SGD([p], lr=1.0), "cosine", 10, 0)
    for _ in range(4):
        old.optimizer.step()
        old.step()
    opt = torch.optim.SGD([p], lr=1.0)
    new = build_scheduler(opt, "cosine", 20, 0)
    new.load_state_dict(old.state_dict())
    assert new.last_epoch == 4 and new.max_epochs == 21
    opt.step()
    new.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(_reference(5, 20, 0))


def _optim(**kw: object) -> dict:
    base = {"name": "sgd", "lr": 0.5, "momentum": 0.9, "weight_decay": 1e-2,
            "warmup_epochs": 0, "scheduler": "constant", "trust_coefficient": 0.001}
    return {**base, **kw}


def test_lars_trains_a_step_and_differs_from_sgd() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    after = {}
    for name in ("sgd", "lars"):
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        model.load_state_dict(net.state_dict())
        built = build_optimizer(_optim(name=name), [model], total_steps=10, max_epochs=1)
        opt = built["optimizer"]
        assert isinstance(opt, LARS) == (name == "lars")
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        after[name] = [p.detach().clone() for p in model.parameters()]
    w0, w_sgd, w_lars = net[0].weight, after["sgd"][0], after["lars"][0]
    assert not torch.equal(w_lars, w0)                 # it trained
    assert not torch.allclose(w_lars, w_sgd)           # and not as SGD: layer-wise rates
    # LARS' first step on a decayed weight: lr * trust * |w| / (|g| + wd |w|) * (g + wd w)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model.load_state_dict(net.state_dict())
    nn.functional.cross_entropy(model(x), y).backward()
    g, w = model[0].weight.grad, model[0].weight.detach()
    rate = 0.001 * w.norm() / (g.norm() + 1e-2 * w.norm() + 1e-8)
    torch.testing.assert_close(w_lars, w - 0.5 * rate * (g + 1e-2 * w))
    # biases (no weight decay) are not rescaled: the plain SGD step
    torch.testing.assert_close(after["lars"][1], after["sgd"][1])


@pytest.mark.parametrize("nesterov", [False, True])
def test_sync_free_lars_equals_lightly_lars_and_reads_nothing(nesterov: bool) -> None:
    """Bit for bit lightly's LARS over several steps (a zero weight and a zero gradient take
    its unscaled branch), with no read of a device value in ``step``."""
    from contrastmix import _validation
    from contrastmix.train.optim import SyncFreeLARS
    from tests._host_reads import forbid_host_reads

    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    for net in nets:
        with torch.no_grad():
            net[1].weight.zero_()  # zero weight: lightly skips the rescaling
    kw = {"lr": 0.3, "momentum": 0.9, "weight_decay": 1e-2, "nesterov": nesterov}
    opts = [LARS(nets[0].parameters(), **kw), SyncFreeLARS(nets[1].parameters(), **kw)]
    before = _validation.debug_checks()
    _validation.set_debug_checks(False)
    try:
        for step in range(4):
            x = torch.randn(7, 6)
            for net, opt in zip(nets, opts, strict=True):
                opt.zero_grad()
                net(x).square().mean().backward()
                if step == 1:
                    net[0].bias.grad.zero_()  # zero gradient: unscaled too
                if isinstance(opt, SyncFreeLARS):
                    with forbid_host_reads(device_side=[net]) as guard:
                        guard.mark_device([p.grad for p in net.parameters()])
                        opt.step()
                else:
                    opt.step()
            for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
                assert torch.equal(a, b)
    finally:
        _validation.set_debug_checks(before)
    with pytest.raises(AssertionError, match="host read"):  # lightly's step reads the norms
        with forbid_host_reads(device_side=[nets[0]]) as guard:
            guard.mark_device([p.grad for p in nets[0].parameters()])
            opts[0].step()


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["optim.name=lamb"], "'optim.name': 'lamb' (must be one of 'sgd', 'adamw', 'lars')"),
        (["optim.name=lars", "optim.weight_decay=0"], "optim.name=lars needs optim.weight_decay"),
        (["optim.name=lars", "optim.trust_coefficient=0"], "'optim.trust_coefficient': 0.0"),
        (["optim.trust_coefficient=0.01"], "optim.trust_coefficient=0.01 applies to "
                                           "optim.name=lars only (optim.name is 'sgd')"),
        (["trainer.loggers=[csv,neptune]"], "unknown logger 'neptune' (choose from csv, "
                                            "tensorboard, wandb, mlflow)"),
        (["trainer.loggers=[tensorboard]"], "must include 'csv'"),
        (["trainer.loggers=[csv,csv]"], "names a logger twice"),
        (["trainer.enable_progress_bar=1"], "'trainer.enable_progress_bar': 1 (must be true, "
                                            "false or 'auto')"),
        (["trainer.enable_progress_bar=sometimes"], "must be true, false or 'auto'"),
    ],
)
def test_recipe_refuses(overrides: list[str], needle: str) -> None:
    with pytest.raises(RecipeError, match=__import__("re").escape(needle)):
        load_recipe("moco_mnist1d", overrides)


def test_a_logger_whose_package_is_missing_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    for name, pkgs in config.LOGGERS.items():  # the real ones, where not installed here
        if pkgs and not any(importlib.util.find_spec(p) for p in pkgs):
            with pytest.raises(RecipeError, match=f"names '{name}', but its package is not "
                                                  f"installed \\(pip install {pkgs[0]}\\)"):
                load_recipe("moco_mnist1d", [f"trainer.loggers=[csv,{name}]"])
    monkeypatch.setitem(config.LOGGERS, "wandb", ("_contrastmix_no_such_package",))
    with pytest.raises(RecipeError, match="names 'wandb', but its package is not installed"):
        load_recipe("moco_mnist1d", ["trainer.loggers=[csv,wandb]"])
    # a finished run's config.yaml is read without the package check (probe never logs)
    raw = {"method": {"name": "moco"}, "trainer": {"loggers": ["csv", "wandb"]}}
    assert list(config.apply_overrides(raw, None).trainer.loggers) == ["csv", "wandb"]


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_bar_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    assert progress_enabled("auto", _Stream(True)) is True
    assert progress_enabled("auto", _Stream(False)) is False
    assert progress_enabled(None, _Stream(True)) is True
    assert progress_enabled(True, _Stream(False)) is True
    assert progress_enabled(False, _Stream(True)) is False
    closed = io.StringIO()
    closed.close()  # isatty raises ValueError
    assert progress_enabled("auto", closed) is False
    with pytest.raises(ValueError, match="true, false or 'auto'"):
        progress_enabled("yes", _Stream(True))
    assert load_recipe("moco_mnist1d").trainer.enable_progress_bar == "auto"  # the default
    # feature extraction: a tqdm bar on a terminal's stderr, the bare iterable elsewhere
    items = [1, 2, 3]
    monkeypatch.setattr("sys.stderr", _Stream(False))
    assert progress(items, "x") is items
    tty = _Stream(True)
    monkeypatch.setattr("sys.stderr", tty)
    assert list(progress(items, "train features")) == items
    assert "train features" in tty.getvalue()


def test_probe_and_report_take_a_progress_bar_flag() -> None:
    from contrastmix.cli import _parser

    for cmd in ("probe", "report"):
        assert _parser().parse_args([cmd, "run"]).progress_bar is None  # auto
        assert _parser().parse_args([cmd, "run", "--progress-bar"]).progress_bar is True
        assert _parser().parse_args([cmd, "run", "--no-progress-bar"]).progress_bar is False


class _Seen(pl.Callback):
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.bar = trainer.progress_bar_callback
        self.loggers = [type(lg).__name__ for lg in trainer.loggers]
        self.optimizer = type(trainer.optimizers[0]).__name__


@pytest.fixture(scope="module")
def lars_tb_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, _Seen, str]:
    """One 2-step run: LARS, csv + tensorboard, the default progress bar ("auto") with a
    terminal as stdout."""
    from contrastmix.train.pretrain import pretrain

    seen, terminal = _Seen(), _Stream(True)
    cfg = load_recipe("moco_mnist1d", [*TINY, "optim.name=lars", "optim.lr=1.0",
                                       "trainer.loggers=[csv,tensorboard]"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdout", terminal)
        run = pretrain(cfg, tmp_path_factory.mktemp("lars") / "run", extra_callbacks=[seen])
    return run, seen, terminal.getvalue()


def test_recipe_loggers_lars_and_the_progress_bar_in_a_run(
    lars_tb_run: tuple[Path, _Seen, str],
) -> None:
    pytest.importorskip("tensorboard")
    run, seen, printed = lars_tb_run
    assert seen.loggers == ["CSVLogger", "TensorBoardLogger"]
    assert seen.optimizer == "SyncFreeLARS"  # lightly's LARS, stepped without host reads
    assert seen.bar is not None and "Epoch 0" in printed  # "auto" on a terminal: a bar
    assert list((run / "tb").rglob("events.out.tfevents.*"))
    with (run / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    losses = [(r["step"], float(r["train_loss_step"])) for r in rows if r.get("train_loss_step")]
    assert [s for s, _ in losses] == ["0", "1"] and all(math.isfinite(v) for _, v in losses)


def test_default_loggers_are_csv_only(tmp_path: Path) -> None:
    from contrastmix.train.loggers import build_loggers

    cfg = load_recipe("moco_mnist1d")
    assert list(cfg.trainer.loggers) == ["csv"]
    assert [type(lg).__name__ for lg in build_loggers(cfg.trainer.loggers, tmp_path, "r")] == [
        "CSVLogger"]
    with pytest.raises(ValueError, match="unknown logger 'x'"):
        build_loggers(["x"], tmp_path, "r")
