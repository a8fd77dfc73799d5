"""Multimodal results: CLIP vs m2-mix on digits-captions, concat vs M3CoL on digits-tri.

Trains every recipe for several seeds (``seed=S``; the data split ``data.seed`` stays fixed,
so the methods are compared on paired runs), probes each run with
:func:`contrastmix.eval.evaluate.probe_run` (the code behind ``contrastmix probe RUN --json``) and prints
markdown tables of mean ± std over seeds (sample std, ddof = 1) with the paired difference
between the two methods of each comparison.

Usage::

    .venv/bin/python benchmarks/multimodal_results.py --seeds 0 1 2 --runs-dir runs/multimodal
    .venv/bin/python benchmarks/multimodal_results.py --json      # machine-readable

Runs that already have a ``backbone.pt`` are probed again, not retrained (``--force`` retrains).
``--cli`` trains through the console script in a subprocess (the command a user types; adds the
interpreter start-up and imports to the measured wall time) instead of in-process.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAIRS = {
    "retrieval": ("clip_digits", "m2mix_digits"),
    "fusion": ("concat_digits_tri", "m3col_digits_tri"),
}
TWO_TOWER_ROWS = [
    ("zero-shot accuracy", "zero_shot_accuracy", "higher"),
    ("zero-shot ECE (15 bins)", "zero_shot_ece", "lower"),
    ("zero-shot NLL", "zero_shot_nll", "lower"),
    ("image->text R@1", "i2t_recall@1", "higher"),
    ("image->text R@5", "i2t_recall@5", "higher"),
    ("text->image R@1", "t2i_recall@1", "higher"),
    ("text->image R@5", "t2i_recall@5", "higher"),
    ("image->text mAP", "i2t_map", "higher"),
    ("text->image mAP", "t2i_map", "higher"),
    ("alignment", "alignment", "lower"),
    ("uniformity (image)", "uniformity_image", "lower"),
    ("uniformity (text)", "uniformity_text", "lower"),
    ("uniformity (union)", "uniformity_union", "lower"),
    ("modality gap", "modality_gap", "lower"),
]
FUSION_ROWS = [
    ("fusion accuracy", "fusion_accuracy", "higher"),
    ("image-head accuracy", "unimodal_accuracy.image", "higher"),
    ("signal-head accuracy", "unimodal_accuracy.signal", "higher"),
    ("text-head accuracy", "unimodal_accuracy.text", "higher"),
    ("fusion ECE (15 bins)", "fusion_ece", "lower"),
    ("fusion NLL", "fusion_nll", "lower"),
]


def _get(d: dict[str, Any], key: str) -> float:
    for part in key.split("."):
        d = d[part]
    return float(d)  # type: ignore[arg-type]


def _fmt(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    m = statistics.fmean(xs)
    s = statistics.stdev(xs) if len(xs) > 1 else float("nan")
    return f"{m:.4f} ± {s:.4f}" if math.isfinite(s) else f"{m:.4f}"


def train_one(recipe: str, seed: int, out: Path, overrides: list[str], cli: bool) -> float:
    """Train one run; returns the wall time of the whole command / call in seconds."""
    start = time.perf_counter()
    if cli:
        cmd = [str(ROOT / ".venv" / "bin" / "contrastmix"), "pretrain", recipe, "--out", str(out),
               "--set", f"seed={seed}", "trainer.enable_progress_bar=false", *overrides]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    else:
        from contrastmix.recipe import load_recipe
        from contrastmix.train.pretrain import pretrain

        cfg = load_recipe(recipe, [f"seed={seed}", "trainer.enable_progress_bar=false",
                                   *overrides])
        pretrain(cfg, out)
    return time.perf_counter() - start


def collect(args: argparse.Namespace) -> dict[str, Any]:
    from contrastmix.eval.evaluate import probe_run

    results: dict[str, Any] = {}
    for recipe in args.recipes:
        rows = []
        for seed in args.seeds:
            out = Path(args.runs_dir) / f"{recipe}_s{seed}"
            wall = None
            if args.force and out.exists():
                shutil.rmtree(out)
            if not (out / "backbone.pt").is_file():
                if out.exists():
                    shutil.rmtree(out)
                wall = train_one(recipe, seed, out, args.set, args.cli)
            summary = json.loads((out / "run.json").read_text())
            probe = probe_run(out)
            rows.append({"seed": seed, "run": str(out), "wall_s": wall,
                         "fit_s": summary["wall_time_s"], "epochs": summary["epochs"],
                         "probe": probe})
            print(f"[{recipe} seed {seed}] fit {summary['wall_time_s']:.1f}s"
                  + (f", command {wall:.1f}s" if wall is not None else " (existing run)"),
                  file=sys.stderr, flush=True)
        results[recipe] = rows
    return results


def table(results: dict[str, Any], base: str, new: str, spec: list[tuple[str, str, str]]) -> str:
    """Markdown table: base, new, paired difference (new - base)."""
    a = {r["seed"]: r["probe"] for r in results[base]}
    b = {r["seed"]: r["probe"] for r in results[new]}
    seeds = sorted(set(a) & set(b))
    lines = [f"| metric | better | {base} | {new} | Δ ({new} − {base}), paired |",
             "|---|---|---|---|---|"]
    for label, key, better in spec:
        xa = [_get(a[s], key) for s in seeds]
        xb = [_get(b[s], key) for s in seeds]
        diff = [y - x for x, y in zip(xa, xb, strict=True)]
        lines.append(f"| {label} | {better} | {_fmt(xa)} | {_fmt(xb)} | {_fmt(diff)} |")
    lines.append(f"\nSeeds: {seeds} (n = {len(seeds)}); mean ± sample std.")
    return "\n".join(lines)


def timing(results: dict[str, Any]) -> str:
    lines = ["| recipe | epochs | Trainer.fit wall (s) | whole command wall (s) |",
             "|---|---|---|---|"]
    for recipe, rows in results.items():
        fit = [r["fit_s"] for r in rows]
        cmd = [r["wall_s"] for r in rows if r["wall_s"] is not None]
        lines.append(f"| {recipe} | {rows[0]['epochs']} | {_fmt(fit)} | {_fmt(cmd)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipes", nargs="+",
                   default=[r for pair in PAIRS.values() for r in pair])
    p.add_argument("--runs-dir", default="runs/multimodal")
    p.add_argument("--set", nargs="*", default=[], help="extra recipe overrides key=value")
    p.add_argument("--force", action="store_true", help="retrain existing runs")
    p.add_argument("--cli", action="store_true", help="train through the console script")
    p.add_argument("--json", action="store_true", help="print the raw results as JSON")
    args = p.parse_args()
    results = collect(args)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, (base, new) in PAIRS.items():
        if base in results and new in results:
            spec = TWO_TOWER_ROWS if name == "retrieval" else FUSION_ROWS
            print(f"\n### {name}: {base} vs {new}\n")
            print(table(results, base, new, spec))
    print("\n### wall time\n")
    print(timing(results))


if __name__ == "__main__":
    main()
