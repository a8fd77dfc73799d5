"""The architecture's rules, checked on the source: one home per method, layers that hold,
no import cycles, no reference to files outside the repository."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the spec the project was written from lives beside the repository, not in it; the pattern is
# assembled so that this file does not name it either
_SPEC = "METHODS"
_OUTSIDE = re.compile("|".join([re.escape(".." + "/" + "shared"), _SPEC + r"\.md", _SPEC + " §"]))
PACKAGES = {ROOT / "contrastmix": "contrastmix", ROOT / "eval": "contrastmix.eval"}


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for base, pkg in PACKAGES.items():
        for f in sorted(base.rglob("*.py")):
            parts = [p for p in f.relative_to(base).with_suffix("").parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = f
    return mods


def _imports(path: Path, mods: dict[str, Path]) -> set[str]:
    """Project modules imported anywhere in ``path`` (module level and inside functions)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            out.update(n for n in names if n in mods)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in mods)
    return out


def test_a_method_name_is_a_string_only_in_its_own_file() -> None:
    from contrastmix.methods import METHODS

    homes = {name: Path(inspect.getfile(cls)).resolve() for name, cls in METHODS.items()}
    offenders = []
    for path in _modules().values():
        text = path.read_text()
        for name, home in homes.items():
            if path.resolve() != home and re.search(rf"[\"']{re.escape(name)}[\"']", text):
                offenders.append(f"{path.relative_to(ROOT)} names '{name}'")
    assert offenders == []


def test_core_and_evaluation_never_import_training_code() -> None:
    """Not at import time, not inside a function: losses, mixing, banks, models, data, the run
    directory reader and evaluation stay free of Lightning, of the methods and of the sweeps
    (:mod:`contrastmix.sweeps` runs training)."""
    mods = _modules()
    core = ("contrastmix.losses", "contrastmix.mixing", "contrastmix.banks",
            "contrastmix.models", "contrastmix.data", "contrastmix.eval", "contrastmix.rundir",
            "contrastmix.runs", "contrastmix.config", "contrastmix._validation",
            "contrastmix._state")
    bad = []
    for name, path in mods.items():
        if not name.startswith(core):
            continue
        text = path.read_text()
        if re.search(r"^\s*(import|from) (pytorch_lightning|lightning)\b", text, re.M):
            bad.append(f"{name} imports Lightning")
        for dep in _imports(path, mods):
            if dep.startswith(("contrastmix.methods", "contrastmix.train", "contrastmix.sweeps")):
                bad.append(f"{name} imports {dep}")
    assert bad == []


def test_no_import_cycles() -> None:
    """The project's import graph (module-level and function-local imports) is acyclic."""
    mods = _modules()
    graph = {m: _imports(p, mods) - {m} for m, p in mods.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(u: str, stack: list[str]) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v, stack)
        stack.pop()
        state[u] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_importing_the_core_loads_no_lightning() -> None:
    code = (
        "import sys\n"
        "import contrastmix.losses, contrastmix.mixing, contrastmix.banks, contrastmix.models\n"
        "import contrastmix.data, contrastmix.config, contrastmix.rundir, contrastmix.runs\n"
        "import contrastmix.eval, contrastmix.eval.report, contrastmix.eval.multimodal\n"
        "import contrastmix.cli\n"
        "bad = [m for m in sys.modules"
        " if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'lightning_fabric')"
        " or m.startswith(('contrastmix.methods', 'contrastmix.train'))]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("folder", ["contrastmix", "eval", "recipes", "tests", "benchmarks",
                                    "docs", "examples", "results", ".ci"])
def test_no_file_refers_outside_the_repository(folder: str) -> None:
    """Docs, docstrings, recipes and reports cite docs/methods.md, never a file outside."""
    bad = []
    for f in sorted((ROOT / folder).rglob("*")):
        if f.is_file() and f.suffix in (".py", ".md", ".yaml", ".yml", ".cff", "") and \
                "__pycache__" not in f.parts:
            text = f.read_text(errors="ignore")
            if _OUTSIDE.search(text):
                bad.append(str(f.relative_to(ROOT)))
    assert bad == []


def test_top_level_files_refer_inside_the_repository() -> None:
    for name in ("README.md", "CITATION.cff", "pyproject.toml"):
        text = (ROOT / name).read_text()
        assert not _OUTSIDE.search(text), name


def test_epoch_metrics_of_methods_are_reduced_over_ranks() -> None:
    # An epoch-level metric logged without sync_dist is rank 0's share of the data under DDP:
    # a silently partial number in metrics.csv. (Step-level values stay unsynchronised: a
    # reduction every step would cost a collective per step.)
    import ast

    missing = []
    for path in sorted((ROOT / "contrastmix" / "methods").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "log"):
                continue
            kw = {k.arg: k.value for k in node.keywords}
            epoch_only = (isinstance(kw.get("on_step"), ast.Constant)
                          and kw["on_step"].value is False
                          and isinstance(kw.get("on_epoch"), ast.Constant)
                          and kw["on_epoch"].value is True)
            if epoch_only and "sync_dist" not in kw:
                missing.append(f"{path.name}:{node.lineno}")
    assert not missing, f"epoch-level self.log without sync_dist: {missing}"
