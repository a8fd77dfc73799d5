"""The method architecture: registry, user methods through --import, process state."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from contrastmix.errors import RecipeError
from contrastmix.methods import METHODS, Method, MethodConfig, get_method, register_method
from contrastmix.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "data.batch_size=64",
        "eval.knn_every_n_epochs=0", "trainer.enable_progress_bar=false"]


def test_registry_names_each_method_once() -> None:
    assert all(m.name == name and m.Config().name == name for name, m in METHODS.items())
    assert all(issubclass(m, Method) for m in METHODS.values())
    with pytest.raises(RecipeError, match="unknown method 'nope'; known methods: .*moco"):
        get_method("nope")


def test_register_method_checks_what_it_is_given() -> None:
    @dataclass
    class Cfg(MethodConfig):
        name: str = "other_name"

    class Bad(Method):
        name = "bad_method"
        Config = Cfg

    with pytest.raises(ValueError, match="default name is 'other_name', expected 'bad_method'"):
        register_method(Bad)
    with pytest.raises(ValueError, match="needs a Method subclass"):
        register_method(object)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is taken by"):
        register_method(type("Clash", (METHODS["moco"],), {}))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "contrastmix.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_user_method_trains_through_the_cli(tmp_path: Path) -> None:
    """examples/my_method.py, outside the package, registered by --import and trained."""
    work = tmp_path / "work"
    work.mkdir()
    run = tmp_path / "run"
    res = _cli("pretrain", str(ROOT / "examples" / "my_method.yaml"), "--import",
               str(ROOT / "examples" / "my_method.py"), "--out", str(run), "--set", *TINY,
               cwd=work)
    assert res.returncode == 0, res.stderr
    cfg = json.loads((run / "run.json").read_text())
    assert cfg["method"] == "my_simclr" and cfg["global_step"] == 2
    assert (run / "backbone.pt").is_file() and (run / "projector.pt").is_file()
    res = _cli("probe", str(run), "--json", cwd=work)
    assert res.returncode == 0, res.stderr
    assert 0.0 <= json.loads(res.stdout)["accuracy"] <= 1.0
    # a dotted module name on the working directory's path
    (work / "my_mod.py").write_text((ROOT / "examples" / "my_method.py").read_text())
    res = _cli("pretrain", str(ROOT / "examples" / "my_method.yaml"), "--import", "my_mod",
               "--set", "method.temperature=0", cwd=work)
    assert res.returncode == 2
    assert res.stderr.strip() == ("contrastmix: error: invalid method setting: "
                                  "`method.temperature` must be > 0, got 0.0")


def test_import_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from contrastmix.cli import main

    bad = tmp_path / "broken.py"
    bad.write_text("raise RuntimeError('boom')\n")
    for target, needle in [(str(bad), "--import " + str(bad) + " failed: RuntimeError: boom"),
                           ("no_such_module_xyz", "No module named 'no_such_module_xyz'"),
                           (str(tmp_path / "missing.py"), "no such file")]:
        assert main(["pretrain", "moco_mnist1d", "--import", target, "--print-config"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("contrastmix: error: "), err
        assert needle in err, err


def test_set_before_the_recipe_does_not_swallow_it(capsys: pytest.CaptureFixture[str]) -> None:
    from contrastmix.cli import main

    assert main(["pretrain", "--set", "optim.lr=0.5", "moco_mnist1d", "--print-config"]) == 0
    assert "lr: 0.5" in capsys.readouterr().out


def test_unknown_method_in_a_recipe_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="unknown method 'mocco'"):
        load_recipe("moco_mnist1d", ["method.name=mocco"])


def test_pretrain_leaves_the_process_as_it_found_it(tmp_path: Path) -> None:
    """A library call: RNG states, thread count and logging filters are restored."""
    import numpy as np

    from contrastmix.train.pretrain import pretrain

    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)  # noqa: NPY002 - the legacy global state is what we check
    threads = torch.get_num_threads()
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())  # noqa: NPY002
    filters = {n: list(logging.getLogger(n).filters)
               for n in ("pytorch_lightning.utilities.rank_zero",)}
    cfg = load_recipe("moco_mnist1d", [*TINY, "method.queue_size=256", "trainer.num_threads=1",
                                       "seed=99"])
    pretrain(cfg, tmp_path / "run")
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), before[0])
    assert random.getstate() == before[1]
    assert (np.random.get_state()[1] == before[2]).all()  # noqa: NPY002
    assert {n: list(logging.getLogger(n).filters) for n in filters} == filters


def test_a_user_backbone_and_dataset_register_by_name(tmp_path: Path) -> None:
    """register_backbone / register_dataset from a module loaded with --import."""
    mod = tmp_path / "my_parts.py"
    mod.write_text(
        "import torch\n"
        "from contrastmix.models import register_backbone\n"
        "from contrastmix.data.registry import register_dataset, DATASETS\n"
        "class Tiny(torch.nn.Module):\n"
        "    def __init__(self, in_channels, width):\n"
        "        super().__init__(); self.output_dim = width\n"
        "        self.net = torch.nn.Sequential(\n"
        "            torch.nn.Flatten(), torch.nn.Linear(40 * in_channels, width))\n"
        "    def forward(self, x): return self.net(x)\n"
        "register_backbone('tiny_mlp', lambda *, in_channels, width, cifar_stem:"
        " Tiny(in_channels, width))\n"
        "register_dataset('my_mnist1d', DATASETS['mnist1d'])\n"
    )
    run = tmp_path / "run"
    res = _cli("pretrain", "moco_mnist1d", "--import", str(mod), "--out", str(run), "--set",
               *TINY, "method.queue_size=256", "model.backbone=tiny_mlp", "model.width=16",
               "data.name=my_mnist1d", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-1500:]
    state = torch.load(run / "backbone.pt", weights_only=True)
    assert state["net.1.weight"].shape == (16, 40)


def test_unknown_backbone_is_one_line() -> None:
    from contrastmix.models import build_backbone

    with pytest.raises(ValueError, match="unknown backbone 'vit'; choose one of cnn1d"):
        build_backbone("vit")


def test_cli_version_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    from contrastmix import __version__
    from contrastmix.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"contrastmix {__version__}"
    assert main(["list"]) == 0
    out = dict(line.split(": ", 1) for line in capsys.readouterr().out.strip().splitlines())
    assert set(out) == {"recipes", "methods", "datasets", "backbones"}
    assert "moco_mnist1d" in out["recipes"].split(", ")
    assert out["methods"].split(", ") == sorted(METHODS)
    assert "mnist1d" in out["datasets"].split(", ") and "cnn1d" in out["backbones"].split(", ")
    assert main(["list", "--import", str(ROOT / "examples" / "my_method.py")]) == 0
    assert "my_simclr" in capsys.readouterr().out
