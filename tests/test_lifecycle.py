"""Runs that never lose work (issue 17, classes 1-3).

1. Every file a run writes is renamed into place complete: a kill or a failure at any point of
   a save leaves the previous good file.
2. One run owns its folder (a lock a dead run does not leave stuck); a fresh run never inherits
   another run's files.
3. SIGINT / SIGTERM stop a run at a batch boundary with a consistent checkpoint, exit 130 / 143
   with one line saying how to resume, and the resumed run's summary covers the whole run.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from contrastmix import _atomic
from contrastmix.errors import RunDirError
from contrastmix.rundir import LOCK_FILE, hold_run_dir

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "moco_mnist1d"
# 3 steps of 32 keys into an 80-slot queue: the pointer says which step the queue has seen
SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "data.batch_size=32",
         "method.queue_size=80", "eval.knn_every_n_epochs=0", "trainer.enable_progress_bar=false",
         "trainer.log_every_n_steps=1"]
SET = ["--set", *SHORT]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(_atomic.TMP_SUFFIX))


# ---------------------------------------------------------------------------------- class 1
def test_a_failing_torch_save_leaves_the_previous_file(tmp_path: Path) -> None:
    """A full disk midway through ``torch.save``: the old file is intact, no temporary left."""
    target = tmp_path / "backbone.pt"
    _atomic.torch_save({"w": torch.ones(3)}, target)
    before = target.read_bytes()

    class FullDisk:
        def __reduce__(self):  # noqa: ANN204 - pickled after the tensor's bytes are written
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        _atomic.torch_save({"w": torch.zeros(1000), "x": FullDisk()}, target)
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []
    torch.testing.assert_close(torch.load(target, weights_only=True)["w"], torch.ones(3))


@pytest.mark.parametrize("where", ["os.fsync", "os.replace"])
def test_a_kill_at_the_flush_or_the_rename_leaves_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Interpose the fsync and the rename: an interrupt there keeps the old content."""
    target = tmp_path / "run.json"
    _atomic.write_json(target, {"old": 1})

    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_atomic.os, where.split(".")[1], killed)
    with pytest.raises(KeyboardInterrupt):
        _atomic.write_json(target, {"new": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": 1}
    assert _leftovers(tmp_path) == []
    _atomic.write_text(target, "{}")  # and the next write goes through
    assert target.read_text() == "{}"


def test_a_process_killed_while_writing_never_truncates_the_target(tmp_path: Path) -> None:
    """SIGKILL halfway through writing a checkpoint (a real kill, in another process)."""
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"good" * 1000)
    code = textwrap.dedent(f"""
        import importlib.util, os, signal
        spec = importlib.util.spec_from_file_location("a", {str(ROOT / "contrastmix/_atomic.py")!r})
        a = importlib.util.module_from_spec(spec); spec.loader.exec_module(a)
        with a.atomic_open({str(target)!r}) as fh:
            fh.write(b"half" * 500); fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    res = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert res.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"good" * 1000  # a stale temporary may remain beside it


def test_a_lightning_checkpoint_that_fails_midway_leaves_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Trainer's checkpoint writer (every ``last.ckpt``) when ``torch.save`` dies halfway."""
    from contrastmix.train.lifecycle import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, target)

    def half(obj: object, f, *args: object, **kwargs: object) -> None:  # noqa: ANN001
        f.write(b"PK" * 4096)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["global_step"] == 1
    assert _leftovers(target.parent) == []


def test_every_run_file_is_written_through_the_atomic_helper() -> None:
    """No plain ``torch.save`` / ``write_text`` / ``savefig(path)`` into a run directory."""
    plain = re.compile(r"torch\.save\(|\.write_text\(|\.write_bytes\(|savefig\((?!buf)|np\.savez\("
                       r"|(?<!atomic_)open\([^)]*[\"']w")
    bad = []
    for folder in ("contrastmix/methods", "contrastmix/train", "eval"):
        for f in sorted((ROOT / folder).rglob("*.py")):
            for i, line in enumerate(f.read_text().splitlines(), 1):
                if plain.search(line) and not line.lstrip().startswith(("#", "``", '"""')):
                    bad.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()}")
    for f in ("contrastmix/rundir.py", "contrastmix/sweeps.py"):
        text = (ROOT / f).read_text()
        bad += [f"{f}: {m}" for m in plain.findall(text)]
    assert bad == []


# ---------------------------------------------------------------------------------- class 2
def test_a_second_run_into_a_busy_folder_is_refused(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from contrastmix.cli import main

    run = tmp_path / "run"
    with hold_run_dir(run):
        assert main(["pretrain", RECIPE, "--out", str(run), *SET]) == 2
        assert main(["pretrain", RECIPE, "--out", str(run), "--resume", *SET]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"contrastmix: error: run folder {run} is in use by another run "
                   f"(pid {os.getpid()})"] * 2
    assert not run.exists()  # the holder created it, wrote nothing, and tidied up


def test_the_lock_is_held_across_processes_and_dies_with_its_holder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = textwrap.dedent(f"""
        import time
        from contrastmix.rundir import hold_run_dir
        with hold_run_dir({str(run)!r}):
            open({str(tmp_path / "held")!r}, "w").close()
            time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(600):
            if (tmp_path / "held").exists() or holder.poll() is not None:
                break
            time.sleep(0.05)
        assert (tmp_path / "held").exists()
        with pytest.raises(RunDirError, match=rf"in use by another run \(pid {holder.pid}\)"):
            with hold_run_dir(run):
                pass
    finally:
        holder.kill()  # dies without releasing anything itself
        holder.wait(timeout=60)
    with hold_run_dir(run):  # the operating system dropped the dead run's lock
        assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert not (run / LOCK_FILE).exists()


def test_a_fresh_run_never_inherits_another_runs_files(tmp_path: Path) -> None:
    from contrastmix.recipe import load_recipe
    from contrastmix.train.pretrain import pretrain

    cfg = load_recipe(RECIPE, SHORT)
    dead = tmp_path / "dead"  # left by a run killed before its first checkpoint
    (dead / "logs" / "version_0").mkdir(parents=True)
    (dead / "logs" / "version_0" / "metrics.csv").write_text("epoch,step,train_loss\n0,0,9\n")
    (dead / "config.yaml").write_text("name: other\n")
    with pytest.raises(RunDirError, match=r"dead is not empty \(config.yaml, logs\) and holds "
                                          r"no checkpoint to resume; choose another --out"):
        pretrain(cfg, dead)
    (dead / "checkpoints").mkdir()
    (dead / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(RunDirError, match="already holds a run.*pass --resume"):
        pretrain(cfg, dead)
    assert (dead / "config.yaml").read_text() == "name: other\n"  # untouched
    assert not (dead / LOCK_FILE).exists()


def test_metrics_of_a_resumed_run_keep_only_the_timeline_that_was_kept(tmp_path: Path) -> None:
    """Rows a segment logged after the checkpoint the next one resumed from, rows of a segment
    killed before any checkpoint and a row cut short by a kill never reach ``metrics.csv``;
    the summary's metrics are the last value of each."""
    from contrastmix.train.pretrain import _merge_metrics

    def seg(name: str, text: str) -> None:
        (tmp_path / "logs" / name).mkdir(parents=True)
        (tmp_path / "logs" / name / "metrics.csv").write_text(text)

    seg("version_0", "epoch,step,loss\n0,0,10\n0,1,11\n0,2,99\n0,3,99\n")  # resumed at 2
    seg("version_1", "epoch,step,loss\n0,1,77\n")  # killed before any checkpoint: not kept
    seg("version_2", "epoch,step,loss,acc\n0,2,12,0.5\n0,3,13,0.6\n0,4\n")  # last row cut
    kept = [{"start_step": 0, "csv_dir": "logs/version_0"},
            {"start_step": 2, "csv_dir": "logs/version_2"}]
    last = _merge_metrics(tmp_path, kept)
    with (tmp_path / "metrics.csv").open() as fh:
        rows = [(r["step"], r["loss"]) for r in csv.DictReader(fh)]
    assert rows == [("0", "10"), ("1", "11"), ("2", "12"), ("3", "13")]
    assert last == {"loss": 13.0, "acc": 0.6}


# ---------------------------------------------------------------------------------- class 3
class SignalMidBatch(pl.Callback):
    """Send ``signum`` to this process between a batch's loss and its optimiser step (the
    batch's keys are already in the queue), at global step ``at``."""

    def __init__(self, signum: int, at: int) -> None:
        self.signum, self.at = signum, at
        self.checkpoint_io: object = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # noqa: ANN001
        self.checkpoint_io = trainer.strategy.checkpoint_io
        if trainer.global_step == self.at:
            os.kill(os.getpid(), self.signum)


def _queue(ckpt: Path) -> tuple[int, int, int]:
    """(global step, queue pointer, queue fill) of a checkpoint."""
    c = torch.load(ckpt, weights_only=True)
    return c["global_step"], int(c["state_dict"]["queue._ptr"]), \
        int(c["state_dict"]["queue._filled"])


def test_an_interrupted_run_saves_a_consistent_checkpoint_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C mid-batch, then SIGTERM mid-batch of the resumed run, then the end."""
    import contrastmix.train.pretrain as pt
    from contrastmix.cli import main

    run = tmp_path / "run"
    real = pt.pretrain
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    sent: list[SignalMidBatch] = []

    def with_signal(signum: int, at: int):  # noqa: ANN202
        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            sent.append(SignalMidBatch(signum, at))
            return real(*args, **kwargs, extra_callbacks=[sent[-1]])
        return call

    # Ctrl-C while batch 2 (global step 1 -> 2) is between its loss and its step: the batch
    # finishes, then the run stops and saves
    monkeypatch.setattr(pt, "pretrain", with_signal(signal.SIGINT, 1))
    assert main(["pretrain", RECIPE, "--out", str(run), *SET]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"contrastmix: interrupted at step 2; resume with: contrastmix pretrain "
                   f"{RECIPE} --out {run} --set {' '.join(SHORT)} --resume"]
    ckpt = run / "checkpoints" / "last.ckpt"
    assert _queue(ckpt) == (2, 2 * 32, 2 * 32)  # the pointer agrees with the step
    from contrastmix.train.lifecycle import AtomicCheckpointIO

    assert isinstance(sent[0].checkpoint_io, AtomicCheckpointIO)  # every save is atomic
    assert not (run / "backbone.pt").exists() and not (run / "run.json").exists()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert not (run / LOCK_FILE).exists()

    # SIGTERM in the resumed run's first batch (step 2 -> 3, the last): 143, not a silent 0
    monkeypatch.setattr(pt, "pretrain", with_signal(signal.SIGTERM, 2))
    assert main(["pretrain", RECIPE, "--out", str(run), "--resume", *SET]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("contrastmix: interrupted at step 3; resume with")
    assert _queue(ckpt) == (3, (3 * 32) % 80, 80)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers

    # the resumed run completes (the steps are all done: it writes the exports); its summary
    # and metrics cover both segments that trained
    monkeypatch.setattr(pt, "pretrain", real)
    assert main(["pretrain", RECIPE, "--out", str(run), "--resume", *SET]) == 0
    summary = json.loads((run / "run.json").read_text())
    assert summary["global_step"] == 3 and summary["resumed"] is True
    assert summary["segments"] == 2
    assert summary["wall_time_s"] > 0 and "train_loss_step" in summary["metrics"]
    with (run / "metrics.csv").open() as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh) if r["train_loss_step"]]
    assert steps == [0, 1, 2]  # every step once, none lost, none repeated
    assert (run / "backbone.pt").is_file()
    assert sorted(p.name for p in run.rglob("*") if p.name.endswith(_atomic.TMP_SUFFIX)) == []


def test_an_interrupt_before_training_leaves_nothing_behind(tmp_path: Path) -> None:
    """A signal while the trainer sets up a fresh run: no checkpoint, the folder is emptied
    (the run can simply be started again), exit status still 130."""
    from contrastmix.errors import RunInterrupted
    from contrastmix.recipe import load_recipe
    from contrastmix.train.pretrain import pretrain

    class SignalInSetup(pl.Callback):
        def setup(self, trainer, pl_module, stage) -> None:  # noqa: ANN001
            os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / "run"
    with pytest.raises(RunInterrupted, match="before a checkpoint was saved") as info:
        pretrain(load_recipe(RECIPE, SHORT), run, extra_callbacks=[SignalInSetup()])
    assert info.value.exit_code == 130 and info.value.step is None
    assert not run.exists()


# ------------------------------------------------------------------- real processes (slow)
_HOLD_AT_STEP = textwrap.dedent("""
    import os, sys, time
    import pytorch_lightning as pl
    import contrastmix.train.pretrain as pt
    from contrastmix.cli import main

    class Hold(pl.Callback):
        # at global step 1: say so, then wait (as a long batch would) until told to go on
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 1:
                open(sys.argv[1], "w").close()
                while not os.path.exists(sys.argv[2]):
                    time.sleep(0.05)

    real = pt.pretrain
    pt.pretrain = lambda *a, **k: real(*a, **k, extra_callbacks=[Hold()])
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.slow
def test_two_processes_one_folder_and_a_real_sigterm(tmp_path: Path) -> None:
    """The issue's report, with real processes: a second ``pretrain`` into the folder of a
    running one is refused (exit 2, one line naming the owner), and SIGTERM from outside makes
    the first one finish its batch, save step 1 and exit 143 with the resume line, not 0."""
    run = tmp_path / "run"
    held, go = tmp_path / "held", tmp_path / "go"
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    log = tmp_path / "first.err"  # a file, not a pipe nobody reads while the test waits
    with log.open("w") as fh:
        first = subprocess.Popen(
            [sys.executable, "-c", _HOLD_AT_STEP, str(held), str(go), "pretrain", RECIPE,
             "--out", str(run), *SET], stderr=fh, stdin=subprocess.DEVNULL, env=env)
    try:
        for _ in range(6000):
            if held.exists() or first.poll() is not None:
                break
            time.sleep(0.05)
        assert held.exists(), log.read_text()
        second = subprocess.run(
            [sys.executable, "-m", "contrastmix.cli", "pretrain", RECIPE, "--out", str(run),
             *SET], capture_output=True, text=True, env=env, timeout=600,
            stdin=subprocess.DEVNULL)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"contrastmix: error: run folder {run} is in use by another run (pid {first.pid})"]
        first.send_signal(signal.SIGTERM)
        go.touch()
        first.wait(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    err = log.read_text()
    assert first.returncode == 143, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"contrastmix: interrupted at step 1; resume with: contrastmix "
                                f"pretrain {RECIPE} --out {run}")
    assert "Traceback" not in err
    assert _queue(run / "checkpoints" / "last.ckpt") == (1, 32, 32)
    assert not (run / LOCK_FILE).exists()


def test_ctrl_c_twice_stops_at_once_and_handlers_come_back() -> None:
    """The first Ctrl-C is only recorded (training stops at the end of the batch); a second
    one raises at once; the process's handlers are the caller's again afterwards."""
    from contrastmix.train.lifecycle import StopOnSignal, StopRequested

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stop = StopOnSignal()
    with stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT
        with pytest.raises(StopRequested, match="SIGINT"):
            stop.on_train_batch_start(None, None, None, 0)  # type: ignore[arg-type]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # (Python runs the handler before this line at the latest)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
