"""A hostile user of the command line (issue 17, class 8): every bad input gives one line
``contrastmix: error: ...`` naming the problem and exit status 2, never a traceback. Every case
fails before training, in-process (``main([...])``)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastmix.cli import _check_memory, _environment_errors, main
from contrastmix.errors import ContrastmixError


@pytest.fixture(scope="module")
def area(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files for the cases: a tiny signal set, a plain file, a binary recipe, a directory, a
    finished-looking run (config.yaml + backbone.pt), a run with a checkpoint past its
    epochs, run folders of the wrong kind, and user modules that misbehave."""
    from omegaconf import OmegaConf

    from contrastmix.models.build import build_backbone
    from contrastmix.recipe import load_recipe

    t = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    np.savez(t / "sig.npz", x=rng.normal(size=(24, 1, 8)).astype("float32"),
             y=np.arange(24) % 3)
    (t / "afile").write_text("x\n")
    (t / "binary.yaml").write_bytes(b"\xff\xfe\x00\x81recipe")
    (t / "list.yaml").write_text("- 1\n- 2\n")
    (t / "adir").mkdir()
    (t / "empty").mkdir()
    (t / "exits.py").write_text("import sys\nsys.exit(3)\n")
    (t / "broken.py").write_text("x = (\n")
    cfg = load_recipe("moco_arrays", [f"data.path={t / 'sig.npz'}", "model.width=2",
                                      "data.batch_size=8", "method.queue_size=16"])
    run = t / "run"
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    net = build_backbone("cnn1d", in_channels=1, width=2, cifar_stem=False)
    torch.save(net.state_dict(), run / "backbone.pt")
    (run / "checkpoints").mkdir()
    torch.save({"hyper_parameters": {"cfg": OmegaConf.to_container(cfg, resolve=True)},
                "epoch": 7,
                "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 7}}}}},
               run / "checkpoints" / "last.ckpt")
    (t / "cfgdir" / "config.yaml").mkdir(parents=True)
    (t / "bincfg").mkdir()
    (t / "bincfg" / "config.yaml").write_bytes(b"\xff\xfe\x00")
    (t / "nobackbone").mkdir()
    (t / "nobackbone" / "config.yaml").write_text((run / "config.yaml").read_text())
    return t


D = ["data.path={T}/sig.npz", "data.batch_size=8", "model.width=2", "method.queue_size=16",
     "trainer.max_epochs=1", "trainer.limit_train_batches=1"]
PT = ["pretrain", "moco_arrays", "--set", *D]
CASES: list[tuple[str, list[str], str]] = [
    # --out / report --out
    ("out is a file", [*PT, "--out", "{T}/afile"], "--out {T}/afile is a file"),
    ("out under a file", [*PT, "--out", "{T}/afile/run"],
     "cannot be created: {T}/afile is a file"),
    ("out empty", [*PT, "--out", ""], "--out is empty"),
    ("report out is a file", ["report", "{T}/run", "--out", "{T}/afile"], "is a file"),
    ("report out under a file", ["report", "{T}/run", "--out", "{T}/afile/r"],
     "{T}/afile is a file"),
    # recipes
    ("binary recipe", ["pretrain", "{T}/binary.yaml"], "is not UTF-8 text"),
    ("directory as recipe", ["pretrain", "{T}/adir"], "recipe not found"),
    ("recipe not a mapping", ["pretrain", "{T}/list.yaml"], "must be a YAML mapping"),
    ("checkpoint as recipe", ["pretrain", "{T}/run/backbone.pt"], "is not UTF-8 text"),
    # --set keys and values
    ("negative seed", [*PT, "seed=-1", "--print-config"], "'seed': -1 (must be in [0, "),
    ("huge seed", [*PT, "seed=99999999999999999999", "--print-config"], "recipe key 'seed'"),
    ("float seed", [*PT, "seed=1.5", "--print-config"], "recipe key 'seed'"),
    ("bad data seed", [*PT, "data.seed=-3", "--print-config"], "'data.seed': -3"),
    ("bad pool seed", [*PT, "data.pool_seeds=[1, -2]", "--print-config"],
     "'data.pool_seeds[1]'"),
    ("method set to a value", [*PT, "method=3", "--print-config"],
     "'method' is a section, not a value"),
    ("trainer set to a value", [*PT, "trainer=3", "--print-config"],
     "'trainer' is a section, not a value"),
    ("nested section set to a value", [*PT, "data.signal_aug=1", "--print-config"],
     "'data.signal_aug' is a section"),
    ("empty key", [*PT, "=1", "--print-config"], "empty key"),
    ("unknown method", [*PT, "method.name=nosuch", "--print-config"], "unknown method 'nosuch'"),
    ("epochs a list", [*PT, "trainer.max_epochs=[1, 2]", "--print-config"],
     "'trainer.max_epochs'"),
    # resources
    ("queue beyond memory", [*PT, "method.queue_size=100000000000", "--out", "{T}/q"],
     "method.queue_size=100000000000 needs"),
    ("queue absurd", [*PT, "method.queue_size=10000000000000000000000", "--out", "{T}/q"],
     "lower method.queue_size"),
    ("one process per CPU device", [*PT, "trainer.devices=100000", "--out", "{T}/d"],
     "trainer.devices=100000 on CPUs"),
    ("resume past max_epochs", [*PT, "--out", "{T}/run", "--resume"],
     "already trained 7 epochs, more than trainer.max_epochs=1"),
    ("resume without checkpoint", [*PT, "--out", "{T}/empty", "--resume"],
     "cannot resume: no checkpoint"),
    # --import
    ("import missing module", [*PT, "--import", "no_such_module_xyz"], "No module named"),
    ("import that exits", [*PT, "--import", "{T}/exits.py"], "called sys.exit(3)"),
    ("import with syntax error", [*PT, "--import", "{T}/broken.py"], "SyntaxError"),
    ("import missing file", ["list", "--import", "{T}/nope.py"], "no such file"),
    # run directories of the wrong kind, devices
    ("probe missing run", ["probe", "{T}/nope"], "run directory does not exist"),
    ("probe empty dir", ["probe", "{T}/empty"], "not a run directory (no config.yaml)"),
    ("probe a file", ["probe", "{T}/afile"], "{T}/afile"),
    ("probe config.yaml a dir", ["probe", "{T}/cfgdir"], "not a run directory"),
    ("probe binary config", ["probe", "{T}/bincfg"], "config.yaml is not UTF-8 text"),
    ("probe without backbone", ["probe", "{T}/nobackbone"], "has no trained backbone"),
    ("report empty dir", ["report", "{T}/empty"], "not a run directory"),
    ("bad device", ["probe", "{T}/run", "--device", "gpu0"], "unknown device 'gpu0'"),
    ("meta device", ["probe", "{T}/run", "--device", "meta"], "unsupported device 'meta'"),
    ("report bad device", ["report", "{T}/run", "--device", "tpu"], "'tpu'"),
]
if not torch.cuda.is_available():
    CASES.append(("absent GPU", ["probe", "{T}/run", "--device", "cuda:1"],
                  "no CUDA GPU is available"))
else:
    CASES.append(("GPU index", ["probe", "{T}/run", "--device", "cuda:999"],
                  "this machine has"))


@pytest.mark.parametrize(("argv", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line(
    area: Path, argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.replace("{T}", str(area)) for a in argv]
    created = [area / n for n in ("q", "d") if not (area / n).exists()]
    rc = main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("contrastmix: error: ")]
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(errors) == 1, err
    assert "\n" not in errors[0]
    assert needle.replace("{T}", str(area)) in errors[0], errors[0]
    assert not any(p.exists() for p in created), "a refused run wrote its directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_folder_is_named(area: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = area / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        rc = main([*[a.replace("{T}", str(area)) for a in PT], "--out", str(locked / "run")])
        err = capsys.readouterr().err
        assert rc == 2 and "permission denied" in err and "Traceback" not in err, err
        rc = main(["report", str(area / "run"), "--out", str(locked / "rep")])
        assert rc == 2 and "permission denied" in capsys.readouterr().err
    finally:
        locked.chmod(0o755)


def _raiser(exc: BaseException):  # type: ignore[no-untyped-def]
    def handler(args: object) -> int:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("exc", "needle"),
    [
        (OSError(errno.EACCES, "Permission denied", "/data/run"),
         "Permission denied: /data/run"),
        (OSError(errno.ENOSPC, "No space left on device", "/data/run/last.ckpt"),
         "No space left on device: /data/run/last.ckpt"),
        (MemoryError(), "out of memory"),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                      "can't allocate memory: you tried to allocate 51200000000000 bytes."),
         "out of memory (tried to allocate 51200000000000 bytes)"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
         "out of memory (tried to allocate 20.00 GiB)"),
    ],
    ids=["permission", "disk-full", "MemoryError", "cpu-alloc", "cuda-oom"],
)
def test_machine_failures_become_one_line(exc: BaseException, needle: str) -> None:
    with pytest.raises(ContrastmixError) as info:
        _environment_errors(_raiser(exc), None)  # type: ignore[arg-type]
    assert needle in str(info.value) and "\n" not in str(info.value)
    # other errors are bugs: they keep their traceback
    with pytest.raises(RuntimeError, match="shape mismatch"):
        _environment_errors(_raiser(RuntimeError("shape mismatch")), None)  # type: ignore[arg-type]


def test_queue_memory_estimate() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"method": {"queue_size": 65536}, "model": {"proj_output_dim": 128}})
    _check_memory(cfg, total=2**30)  # 32.5 MiB of 1 GiB: fine
    with pytest.raises(ContrastmixError, match=r"method.queue_size=65536 needs 0.0317 GiB"):
        _check_memory(cfg, total=2**25)
    _check_memory(OmegaConf.create({"method": {}, "model": {"proj_output_dim": 8}}), total=1)
