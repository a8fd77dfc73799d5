"""A non-editable install: the wheel ships contrastmix, contrastmix.eval and the recipes, and no
top-level ``eval``; a bundled recipe runs by name from another folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_package_eval_and_recipes(tmp_path: Path) -> None:
    src = tmp_path / "src"  # build from a copy: the build leaves build/ and *.egg-info behind
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for name in ("contrastmix", "eval", "recipes"):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(out), str(src)], check=True,
                   capture_output=True, text=True)
    (wheel,) = out.glob("contrastmix-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "eval" not in tops and "recipes" not in tops, sorted(tops)
    assert "contrastmix/eval/probe.py" in names and "contrastmix/eval/report.py" in names
    assert "contrastmix/recipes/moco_mnist1d.yaml" in names
    assert "contrastmix/methods/moco.py" in names

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                    "--target", str(target), str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "eval").mkdir(parents=True)  # a user's own eval/ folder shadows nothing
    (elsewhere / "eval" / "__init__.py").write_text("raise ImportError('user eval')\n")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, '')\n"
        "import contrastmix, contrastmix.eval.probe, contrastmix.recipe as c\n"
        "assert contrastmix.__file__.startswith(sys.argv[1]), contrastmix.__file__\n"
        "assert str(c.RECIPES_DIR).startswith(sys.argv[1]), c.RECIPES_DIR\n"
        "from contrastmix.cli import main\n"
        "sys.exit(main(['pretrain', 'moco_mnist1d', '--out', 'run', '--set',"
        " 'trainer.max_epochs=1', 'trainer.limit_train_batches=2', 'method.queue_size=256',"
        " 'data.batch_size=64', 'eval.knn_every_n_epochs=0',"
        " 'trainer.enable_progress_bar=false']))\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(target)], cwd=elsewhere,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (elsewhere / "run" / "backbone.pt").is_file()
