"""End to end through the console script: pretrain a short run, probe it, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CLI = [sys.executable, "-m", "contrastmix.cli"]
SHORT = [
    "--set", "trainer.max_epochs=1", "trainer.limit_train_batches=4", "method.queue_size=512",
    "trainer.enable_progress_bar=false", "data.eval_batch_size=2048",
]


def run(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2")
    res = subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=600)
    if check and res.returncode != 0:
        raise AssertionError(f"{args} failed:\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture(scope="module")
def moco_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "moco"
    run("pretrain", "moco_mnist1d", "--out", str(out), *SHORT, check=True)
    return out


def test_pretrain_writes_the_run_directory(moco_run: Path) -> None:
    for name in ("config.yaml", "checkpoints/last.ckpt", "backbone.pt", "metrics.csv"):
        assert (moco_run / name).is_file(), name
    state = torch.load(moco_run / "backbone.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    header = (moco_run / "metrics.csv").read_text().splitlines()[0]
    assert "train_loss_epoch" in header and "knn_acc" in header and "proxy_acc" in header
    ckpt = torch.load(moco_run / "checkpoints/last.ckpt", weights_only=True)
    assert "queue._features" in ckpt["state_dict"] and "queue._ptr" in ckpt["state_dict"]
    # 4 steps x 256 keys through a 512-slot ring: full, pointer wrapped back to 0
    assert int(ckpt["state_dict"]["queue._filled"]) == 512
    assert int(ckpt["state_dict"]["queue._ptr"]) == (4 * 256) % 512


def test_probe_json(moco_run: Path) -> None:
    res = run("probe", str(moco_run), "--json", "--knn", check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["task"] == "classification"
    assert out["n_train"] == 4000 and out["n_test"] == 1000
    assert 0.3 < out["accuracy"] <= 1.0  # a random CNN reaches ~0.6; raw signals 0.32
    assert "penalty" in out and "penalty_grid" in out and 0 <= out["knn_accuracy"] <= 1


def _one_line_error(res: subprocess.CompletedProcess[str], needle: str) -> None:
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("contrastmix: error:")]
    assert len(lines) == 1 and needle in lines[0], res.stderr


def test_unknown_recipe_key(tmp_path: Path) -> None:
    res = run("pretrain", "moco_mnist1d", "--out", str(tmp_path / "x"),
              "--set", "trainer.max_epochz=1")
    _one_line_error(res, "unknown recipe key 'trainer.max_epochz'")


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        # rejected when the module is built
        ("method.temperature=0", "invalid method setting: `method.temperature` must be > 0"),
        # rejected by Lightning when the Trainer is built
        ("trainer.precision=17", "trainer settings rejected: Precision '17' is invalid"),
    ],
)
def test_values_rejected_when_built(tmp_path: Path, override: str, needle: str) -> None:
    out = tmp_path / "x"
    _one_line_error(run("pretrain", "moco_mnist1d", "--out", str(out), "--set", override),
                    needle)
    assert not out.exists()  # nothing is written for a recipe that did not build


def test_missing_recipe_file(tmp_path: Path) -> None:
    _one_line_error(run("pretrain", str(tmp_path / "nope.yaml")), "recipe not found")


def test_run_dir_without_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _one_line_error(run("probe", str(tmp_path / "empty")), "not a run directory")
    _one_line_error(run("pretrain", "moco_mnist1d", "--out", str(tmp_path / "empty"),
                        "--resume"), "no checkpoint")


def test_missing_dataset_path(tmp_path: Path) -> None:
    res = run("pretrain", "moco_mnist1d", "--out", str(tmp_path / "x"), "--set",
              "data.name=imagefolder", f"data.root={tmp_path}/missing")
    _one_line_error(res, "dataset path does not exist")


def test_checkpoint_of_another_method(moco_run: Path) -> None:
    res = run("pretrain", "moco_mnist1d", "--out", str(moco_run), "--resume", "--set",
              "method.name=mochi")
    _one_line_error(res, "trained with method 'moco'")


def test_backbone_of_another_architecture(moco_run: Path, tmp_path: Path) -> None:
    import shutil

    other = tmp_path / "other"
    shutil.copytree(moco_run, other)
    cfg = (other / "config.yaml").read_text().replace("width: 32", "width: 16")
    (other / "config.yaml").write_text(cfg)
    _one_line_error(run("probe", str(other)), "does not match the recipe's backbone")


def test_existing_run_is_not_overwritten(moco_run: Path) -> None:
    _one_line_error(run("pretrain", "moco_mnist1d", "--out", str(moco_run)), "--resume")


def test_bad_device_is_one_line(moco_run: Path) -> None:
    _one_line_error(run("probe", str(moco_run), "--device", "foo"), "unknown device 'foo'")


def test_device_and_output_errors_name_the_problem(moco_run: Path, tmp_path: Path) -> None:
    from contrastmix.errors import ContrastmixError, RunDirError
    from contrastmix.eval.report import write_report
    from contrastmix.runs import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ContrastmixError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ContrastmixError, match="no CUDA GPU is available"):
            resolve_device("cuda")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(RunDirError, match="cannot write the report to"):
        write_report(moco_run, blocker / "report", log=lambda msg: None)


def test_corrupt_run_files_are_named(moco_run: Path, tmp_path: Path) -> None:
    import shutil

    from contrastmix.errors import CheckpointError, RunDirError
    from contrastmix.rundir import read_run_config
    from contrastmix.runs import load_state_file

    other = tmp_path / "other"
    shutil.copytree(moco_run, other)
    (other / "config.yaml").write_text("method: [\n")
    with pytest.raises(RunDirError, match="config.yaml is not valid YAML"):
        read_run_config(other)
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint\n")
    for mmap in (False, True):  # resume maps the checkpoint: same error for a garbage file
        with pytest.raises(CheckpointError, match="not a weights-only torch file"):
            load_state_file(garbage, mmap=mmap)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((moco_run / "backbone.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read .*truncated.pt"):
        load_state_file(truncated)


class _Payload:
    """Unpickling this would create the marker file: weights-only loading must refuse it."""

    marker = ""

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.marker), "pwned"))  # type: ignore[return-value]


def test_pickled_code_is_never_run(tmp_path: Path) -> None:
    from contrastmix.errors import CheckpointError
    from contrastmix.runs import load_state_file

    marker = tmp_path / "marker"
    payload = _Payload()
    payload.marker = str(marker)
    evil = tmp_path / "evil.pt"
    torch.save({"weight": payload}, evil)
    with pytest.raises(CheckpointError, match="not a weights-only torch file"):
        load_state_file(evil)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is live: a full unpickle runs it
    assert marker.read_text() == "pwned"


def test_nan_embeddings_are_named(moco_run: Path, tmp_path: Path) -> None:
    import shutil

    from contrastmix._validation import NonFiniteError
    from contrastmix.errors import EmbeddingError
    from contrastmix.eval.evaluate import probe_run
    from contrastmix.eval.report import write_report

    assert issubclass(NonFiniteError, ValueError)  # library callers still get a ValueError
    diverged = tmp_path / "diverged"
    shutil.copytree(moco_run, diverged)
    state = torch.load(diverged / "backbone.pt", weights_only=True)
    first = next(k for k, v in state.items() if v.is_floating_point() and v.ndim > 1)
    state[first] = torch.full_like(state[first], float("nan"))
    torch.save(state, diverged / "backbone.pt")
    with pytest.raises(EmbeddingError, match="non-finite embeddings .*The run diverged"):
        probe_run(diverged, device="cpu")
    # the report is still written (its design), and says why its embedding sections are empty
    page = write_report(diverged, tmp_path / "report", log=lambda msg: None).read_text()
    assert "feature extraction: NonFiniteError: `train features` contains" in page


def test_probe_features_option(moco_run: Path, tmp_path: Path, capsys) -> None:
    """`probe --features` (in-process): the projector's normalised output, recorded."""
    import shutil

    from contrastmix.cli import main

    assert main(["probe", str(moco_run), "--json", "--device", "cpu",
                 "--features", "projector-normalised"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["features"] == "projector-normalised" and out["num_features"] == 128
    assert out["protocol"]["features"].startswith("L2-normalised projector output")
    assert out["converged"] and out["warnings"] == []
    # a run without a projector: one line naming the problem, before any probing
    other = tmp_path / "noproj"
    shutil.copytree(moco_run, other)
    art = json.loads((other / "artifacts.json").read_text())
    art["projector"] = None
    (other / "artifacts.json").write_text(json.dumps(art))
    assert main(["probe", str(other), "--device", "cpu", "--features", "projector"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no projector" in err[0]
    with pytest.raises(SystemExit):  # argparse refuses an unknown space
        main(["probe", str(moco_run), "--features", "head"])
