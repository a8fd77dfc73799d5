"""Seed sweeps: train a recipe where its run is missing, probe it once, report mean ± std.

The helpers behind ``benchmarks/sweeps/*.py`` (and any study of your own over seeds):

- :func:`train_if_missing` trains one ``(recipe, overrides, seed)`` into a run directory, or
  leaves a finished run alone, or resumes an interrupted one (``checkpoints/last.ckpt``
  without ``backbone.pt``); a run directory that holds another recipe is an error, not a
  silent reuse.
- :func:`probe` is :func:`contrastmix.eval.evaluate.probe_run` with its result cached in the
  run directory (``probe.json``, one entry per set of keyword arguments).
- :func:`mean_std`, :func:`format_mean_std`, :func:`paired_difference` and
  :func:`markdown_table` turn per-seed numbers into the tables of ``results/*.md``: mean ±
  sample standard deviation (``n - 1`` divisor) and, for two methods run on the same seeds,
  the mean paired difference with its 95 % Student-t interval.

An application-level module: it runs training (:mod:`contrastmix.train.pretrain`,
:mod:`contrastmix.recipe`, imported when first needed, so that ``import contrastmix.sweeps``
stays light). The core and evaluation never import it.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import shlex
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from contrastmix._atomic import write_json
from contrastmix._json import loads
from contrastmix.errors import RunDirError
from contrastmix.rundir import LOCK_FILE, hold_run_dir, run_paths

__all__ = [
    "PROBE_CACHE",
    "run_dir_for",
    "is_trained",
    "train_if_missing",
    "finished_run",
    "add_sweep_arguments",
    "sweep_settings",
    "probe",
    "run_summary",
    "mean_std",
    "format_mean_std",
    "paired_difference",
    "format_paired_difference",
    "markdown_table",
    "reproduce_command",
]

#: The file in a run directory that caches :func:`probe` results.
PROBE_CACHE = "probe.json"
_CACHE_FORMAT = 1


# ---------------------------------------------------------------------------- training
def run_dir_for(runs_dir: str | Path, name: str, seed: int) -> Path:
    """The run directory of ``name`` (a recipe, or any label) at ``seed``:
    ``runs_dir/<name>_seed<seed>``."""
    return Path(runs_dir) / f"{name}_seed{seed}"


def is_trained(run_dir: str | Path) -> bool:
    """True when the run finished (its ``backbone.pt`` exists)."""
    return run_paths(run_dir)["backbone"].is_file()


def _config_diff(saved: str, wanted: str, lines: int = 6) -> str:
    diff = [d for d in difflib.unified_diff(saved.splitlines(), wanted.splitlines(),
                                            "config.yaml", "recipe", lineterm="", n=0)
            if d[:1] in "+-" and not d.startswith(("+++", "---"))]
    more = f" (+{len(diff) - lines} more)" if len(diff) > lines else ""
    return "; ".join(diff[:lines]) + more


def _clear(out: Path) -> None:
    """Delete everything in the run directory ``out``, holding its lock while doing so: a run
    that is still training there (e.g. another sweep process on the same seed) is never
    deleted under it (:class:`~contrastmix.errors.RunDirError` "in use" instead)."""
    with hold_run_dir(out):
        for child in out.iterdir():
            if child.name == LOCK_FILE:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def train_if_missing(
    recipe: str | Path,
    out_dir: str | Path,
    overrides: Sequence[str] = (),
    *,
    seed: int,
    force: bool = False,
    cli: bool = False,
) -> Path:
    """Train ``recipe`` with ``overrides`` and ``seed=<seed>`` into ``out_dir`` unless done.

    - ``backbone.pt`` exists: the run is finished; nothing is trained.
    - ``checkpoints/last.ckpt`` exists but no ``backbone.pt``: an interrupted run; it is
      resumed (``pretrain(..., resume=True)``).
    - otherwise the run is trained from the start (a directory that holds only the
      ``config.yaml`` of a run that died before its first checkpoint is cleared first).

    Progress bars are off (``trainer.enable_progress_bar=false``, before ``overrides``, which
    may turn them on again); ``seed`` is applied last.

    Args:
        recipe: A recipe path or the name of a bundled recipe.
        out_dir: The run directory.
        overrides: ``key=value`` recipe overrides.
        seed: The run's ``seed``.
        force: Delete ``out_dir`` first and train again.
        cli: Train in a subprocess, ``python -m contrastmix.cli pretrain`` with this
            interpreter (the command a user types, with its start-up and imports), instead of
            calling :func:`contrastmix.train.pretrain.pretrain` in this process.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        RunDirError: ``out_dir`` holds a run whose ``config.yaml`` is not this recipe with
            these overrides (pass ``force``, or use another directory), or a directory that
            is not a run directory, or a run that another process is training (nothing is
            deleted under it).
        RecipeError: the recipe or an override does not validate.
        RuntimeError: the ``cli`` subprocess failed (the message ends with its stderr).
    """
    from omegaconf import OmegaConf

    from contrastmix.recipe import load_recipe

    out = Path(out_dir)
    paths = run_paths(out)
    ovs = ["trainer.enable_progress_bar=false", *overrides, f"seed={seed}"]
    cfg = load_recipe(recipe, ovs)  # validates before anything is deleted or trained
    if force and out.exists():
        _clear(out)
    started = paths["backbone"].is_file() or paths["last"].is_file()
    if started:
        wanted = OmegaConf.to_yaml(cfg)
        saved = paths["config"].read_text() if paths["config"].is_file() else ""
        if saved != wanted:
            raise RunDirError(
                f"{out} holds a run of another recipe or other overrides "
                f"({_config_diff(saved, wanted)}); retrain it with force=True (--force) or "
                "choose another runs directory"
            )
        if paths["backbone"].is_file():
            return out
    elif out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()):
        if not paths["config"].is_file():
            raise RunDirError(f"{out} exists and is not a run directory; choose another one")
        _clear(out)  # a run that died before its first checkpoint: start over
    resume = paths["last"].is_file()
    if cli:
        cmd = [sys.executable, "-m", "contrastmix.cli", "pretrain", str(recipe), "--out",
               str(out), *(["--resume"] if resume else []), "--set", *ovs]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed ({res.returncode}):\n"
                               f"{res.stderr[-3000:]}")
    else:
        from contrastmix.train.pretrain import pretrain

        pretrain(cfg, out, resume=resume)
    return out


def finished_run(
    recipe: str | Path, out_dir: str | Path, overrides: Sequence[str] = (), *, seed: int,
    train: bool = True, cli: bool = False,
) -> Path | None:
    """:func:`train_if_missing` when ``train``; otherwise only read: ``out_dir`` when its run
    finished, ``None`` when it did not (e.g. ``--no-train`` while another process still
    trains that seed)."""
    if train:
        return train_if_missing(recipe, out_dir, overrides, seed=seed, cli=cli)
    return Path(out_dir) if is_trained(out_dir) else None


def add_sweep_arguments(
    parser: argparse.ArgumentParser, *, runs_dir: str, quick: Sequence[str],
    overrides: Sequence[str] = (), no_train: bool = True,
) -> None:
    """The options every claim sweep shares: ``--seeds``, ``--runs-dir``, ``--set``,
    ``--no-train`` (when ``no_train``), ``--quick`` and ``--json``; read them back with
    :func:`sweep_settings`.

    Args:
        parser: The script's parser.
        runs_dir: Default runs folder (``--quick`` uses ``<runs_dir>-quick``).
        quick: The overrides ``--quick`` puts before ``--set``'s.
        overrides: ``--set``'s default.
        no_train: Add ``--no-train``.
    """
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    parser.add_argument("--runs-dir", default=None,
                        help=f"default {runs_dir} ({runs_dir}-quick with --quick)")
    default = (f" (default: {' '.join(overrides)})" if overrides else "")
    parser.add_argument("--set", dest="overrides", nargs="*", default=list(overrides),
                        help="recipe overrides key=value for every run" + default)
    if no_train:
        parser.add_argument("--no-train", action="store_true",
                            help="only read the runs that exist (e.g. while other seeds "
                            "still train)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: seeds 0 1, " + " ".join(quick))
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON")


def sweep_settings(args: argparse.Namespace, *, runs_dir: str, quick: Sequence[str]
                   ) -> tuple[list[int], list[str], Path]:
    """``(seeds, overrides, runs folder)`` from the options of :func:`add_sweep_arguments`:
    seeds 0 1 2 by default (0 1 with ``--quick``), and ``--quick``'s overrides before
    ``--set``'s."""
    seeds = list(args.seeds or ([0, 1] if args.quick else [0, 1, 2]))
    overrides = [*(quick if args.quick else []), *args.overrides]
    root = Path(args.runs_dir or (f"{runs_dir}-quick" if args.quick else runs_dir))
    return seeds, overrides, root


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``run.json`` (method, epochs, ``wall_time_s``: training time summed over a
    resumed run's segments, last metrics)."""
    return loads(run_paths(run_dir)["summary"].read_text())  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- probing
def _stamp(path: Path) -> list[int] | None:
    """``[mtime_ns, size]`` of ``path`` (None if missing): a retrained backbone changes it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_mtime_ns, st.st_size]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT:
        return {}  # another layout (e.g. an older script's): recompute
    probes = data.get("probes")
    return probes if isinstance(probes, dict) else {}


def probe(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """:func:`contrastmix.eval.evaluate.probe_run` ``(run_dir, **kwargs)``, cached.

    The result is kept in ``run_dir/probe.json`` under the keyword arguments (``knn=True``
    and no arguments are two entries) together with the ``backbone.pt`` it was computed
    from; a later call with the same arguments on the same backbone reads it back, a
    retrained backbone is probed again.

    Args:
        run_dir: A finished run directory.
        **kwargs: ``probe_run``'s keyword arguments (``knn``, ``geometry``, ``device``);
            JSON-serialisable.

    Returns:
        ``probe_run``'s dict.
    """
    from contrastmix.eval.evaluate import probe_run

    run_dir = Path(run_dir)
    key = json.dumps(kwargs, sort_keys=True)
    cache_path = run_dir / PROBE_CACHE
    stamp = _stamp(run_paths(run_dir)["backbone"])
    probes = _read_cache(cache_path)
    hit = probes.get(key)
    if isinstance(hit, dict) and stamp is not None and hit.get("backbone") == stamp:
        return hit["result"]  # type: ignore[no-any-return]
    result = probe_run(run_dir, **kwargs)
    probes[key] = {"backbone": stamp, "result": result}
    write_json(cache_path, {"format": _CACHE_FORMAT, "probes": probes}, indent=1)
    return result


# ---------------------------------------------------------------------------- statistics
def _values(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None]


def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n - 1`` divisor) of ``values``.

    ``None`` entries (a missing seed) are left out; NaN entries are kept (and give NaN).

    Returns:
        ``(mean, std)``; ``std`` is NaN for one value, both are NaN for none.
    """
    xs = _values(values)
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan


def format_mean_std(values: Iterable[float | None], digits: int = 3) -> str:
    """``"0.883 ± 0.018"`` (:func:`mean_std`, ``digits`` decimals); ``"0.883 ± n/a"`` for one
    value, ``"n/a"`` for none."""
    xs = _values(values)
    if not xs:
        return "n/a"
    m, s = mean_std(xs)
    return f"{m:.{digits}f} ± " + ("n/a" if len(xs) < 2 else f"{s:.{digits}f}")


def paired_difference(
    a: Sequence[float | None], b: Sequence[float | None], confidence: float = 0.95
) -> tuple[float, float, tuple[float, float]]:
    """Mean paired difference ``a_i - b_i`` with its Student-t interval.

    ``a`` and ``b`` are the same seeds' results of two methods (the same data split, one
    seed per pair); pairs with a ``None`` on either side are left out.

    Args:
        a: Values of the first method.
        b: Values of the second method, in the same order.
        confidence: Coverage of the interval (two-sided).

    Returns:
        ``(mean, std, (lo, hi))``: mean and sample std (``n - 1``) of the differences and
        ``mean ± t_{(1+confidence)/2, n-1} · std / sqrt(n)``. With one pair ``std`` and the
        interval are NaN; with none everything is NaN.

    Raises:
        ValueError: ``a`` and ``b`` differ in length, or ``confidence`` is not in (0, 1).
    """
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)
         if x is not None and y is not None]
    m, s = mean_std(d)
    if len(d) < 2:
        return m, s, (math.nan, math.nan)
    from scipy.stats import t as student_t

    half = float(student_t.ppf((1 + confidence) / 2, len(d) - 1)) * s / math.sqrt(len(d))
    return m, s, (m - half, m + half)


def format_paired_difference(
    a: Sequence[float | None], b: Sequence[float | None], digits: int = 3,
    confidence: float = 0.95,
) -> str:
    """``"+0.012 ± 0.004 [+0.002, +0.022]"``: :func:`paired_difference` (mean ± std, then the
    interval); ``"+0.012 ± n/a"`` for one pair, ``"n/a"`` for none."""
    m, s, (lo, hi) = paired_difference(a, b, confidence)
    if math.isnan(m):
        return "n/a"
    if math.isnan(s):
        return f"{m:+.{digits}f} ± n/a"
    return f"{m:+.{digits}f} ± {s:.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


# ---------------------------------------------------------------------------- tables
def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Iterable[Mapping[str, Any] | Sequence[Any]],
                   columns: Sequence[str]) -> str:
    """A markdown table with the header ``columns``.

    Args:
        rows: Mappings (a cell is ``row[column]``, empty when missing) or sequences (one
            value per column, in order). Cells are ``str(value)`` (``None`` is empty; ``|``
            is escaped).
        columns: The header.

    Returns:
        The table's lines joined by newlines (no trailing newline).

    Raises:
        ValueError: a sequence row whose length is not ``len(columns)``.
    """
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |",
             "|" + "---|" * len(columns)]
    for row in rows:
        if isinstance(row, Mapping):
            cells = [row.get(c) for c in columns]
        else:
            cells = list(row)
            if len(cells) != len(columns):
                raise ValueError(f"row {cells!r} has {len(cells)} cells for "
                                 f"{len(columns)} columns")
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def reproduce_command(script: str | Path, argv: Sequence[str]) -> str:
    """``"python benchmarks/sweeps/NAME.py ARGS"``: the command that reruns ``script``
    (``__file__``; shown from its ``benchmarks/`` folder on) with ``argv``."""
    parts = Path(script).parts
    rel = (Path(*parts[len(parts) - 1 - parts[::-1].index("benchmarks"):])
           if "benchmarks" in parts else Path(script))
    return shlex.join(["python", rel.as_posix(), *argv])
