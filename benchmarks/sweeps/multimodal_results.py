"""Multimodal results: CLIP vs m2-mix on digits-captions, concat vs M3CoL on digits-tri.

Trains every recipe for several seeds (``seed=S``; the data split ``data.seed`` stays fixed,
so the methods are compared on paired runs) in ``RUNS_DIR/<recipe>_seed<S>``
(:func:`contrastmix.sweeps.train_if_missing`: finished runs are kept, ``--force`` retrains),
probes each run (:func:`contrastmix.sweeps.probe`, the code behind ``contrastmix probe RUN
--json``, cached in the run) and prints markdown tables of mean ± std over seeds (sample std,
ddof = 1) with the paired difference between the two methods of each comparison (mean ± std
of the per-seed differences and their 95 % Student-t interval).

Usage::

    python benchmarks/sweeps/multimodal_results.py --seeds 0 1 2 --runs-dir runs/multimodal
    python benchmarks/sweeps/multimodal_results.py --json      # machine-readable
    python benchmarks/sweeps/multimodal_results.py --quick     # smoke run
    python benchmarks/sweeps/multimodal_results.py --seeds 0 1 2 --contrast-weights 0 0.01 0.1

``--contrast-weights W ...`` also trains ``m3col_digits_tri`` with ``method.contrast_weight=W``
for each W (in ``RUNS_DIR/contrast_weight_W``) and prints its fusion accuracy against
``concat_digits_tri`` (added to the recipes), paired by seed. Weight 0 is M3CoL without its
contrast term, i.e. concat: its difference must be exactly 0, a check of the pairing.

``--cli`` trains through ``python -m contrastmix.cli pretrain`` in a subprocess (the command a
user types; adds the interpreter start-up and imports to the measured wall time) instead of
in-process.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from contrastmix._json import dumps
from contrastmix.sweeps import (
    format_mean_std,
    format_paired_difference,
    is_trained,
    markdown_table,
    probe,
    reproduce_command,
    run_dir_for,
    run_summary,
    train_if_missing,
)

PAIRS = {
    "retrieval": ("clip_digits", "m2mix_digits"),
    "fusion": ("concat_digits_tri", "m3col_digits_tri"),
    # modalities that also share per-instance information (data.options.instance_shared)
    "fusion, instance-level": ("concat_digits_tri_instance", "m3col_digits_tri_instance"),
}
#: The recipe whose contrast weight ``--contrast-weights`` sweeps, and its baseline.
SWEPT, SWEPT_BASE = "m3col_digits_tri", "concat_digits_tri"
#: ``--quick``: one epoch of two batches per run.
QUICK = ["trainer.max_epochs=1", "trainer.limit_train_batches=2"]
TWO_TOWER_ROWS = [
    ("zero-shot accuracy", "zero_shot_accuracy", "higher"),
    ("zero-shot ECE (15 bins)", "zero_shot_ece", "lower"),
    ("zero-shot NLL", "zero_shot_nll", "lower"),
    ("image->text hit rate@1", "i2t_hit_rate@1", "higher"),
    ("image->text hit rate@5", "i2t_hit_rate@5", "higher"),
    ("text->image hit rate@1", "t2i_hit_rate@1", "higher"),
    ("text->image hit rate@5", "t2i_hit_rate@5", "higher"),
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
        if part not in d and "_hit_rate@" in part:  # a result probed before the rename
            part = part.replace("_hit_rate@", "_recall@")
        d = d[part]
    return float(d)  # type: ignore[arg-type]


def _weight_key(w: float) -> str:
    return f"{SWEPT} contrast_weight={w:g}"


def collect(args: argparse.Namespace) -> dict[str, Any]:
    overrides = [*(QUICK if args.quick else []), *args.set]
    seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    runs_dir = Path(args.runs_dir or ("runs/multimodal-quick" if args.quick
                                      else "runs/multimodal"))
    # (result key, recipe, extra overrides, runs folder)
    entries: list[tuple[str, str, list[str], Path]] = [
        (r, r, [], runs_dir) for r in args.recipes]
    if args.contrast_weights:
        if SWEPT_BASE not in args.recipes:
            entries.append((SWEPT_BASE, SWEPT_BASE, [], runs_dir))
        entries += [(_weight_key(w), SWEPT, [f"method.contrast_weight={w!r}"],
                     runs_dir / f"contrast_weight_{w:g}") for w in args.contrast_weights]
    results: dict[str, Any] = {}
    for key, recipe, extra, folder in entries:
        rows = []
        for seed in seeds:
            out = run_dir_for(folder, recipe, seed)
            fresh = args.force or not is_trained(out)
            start = time.perf_counter()
            train_if_missing(recipe, out, [*overrides, *extra], seed=seed, force=args.force,
                             cli=args.cli)
            wall = time.perf_counter() - start if fresh else None
            summary = run_summary(out)
            rows.append({"seed": seed, "run": str(out), "wall_s": wall,
                         "fit_s": summary["wall_time_s"], "epochs": summary["epochs"],
                         "probe": probe(out)})
            print(f"[{key} seed {seed}] fit {summary['wall_time_s']:.1f}s"
                  + (f", command {wall:.1f}s" if wall is not None else " (existing run)"),
                  file=sys.stderr, flush=True)
        results[key] = rows
    return results


def weight_table(results: dict[str, Any], weights: list[float]) -> str:
    """Fusion accuracy of M3CoL at each contrast weight against concat, paired by seed."""
    base = {r["seed"]: _get(r["probe"], "fusion_accuracy") for r in results[SWEPT_BASE]}
    rows = [[f"{SWEPT_BASE} (baseline)", format_mean_std(list(base.values()), 4), "-"]]
    for w in weights:
        new = {r["seed"]: _get(r["probe"], "fusion_accuracy") for r in results[_weight_key(w)]}
        seeds = sorted(set(base) & set(new))
        rows.append([f"contrast_weight={w:g}", format_mean_std([new[s] for s in seeds], 4),
                     format_paired_difference([new[s] for s in seeds],
                                              [base[s] for s in seeds], 4)])
    return markdown_table(rows, ["M3CoL on digits-tri", "fusion accuracy",
                                 "Δ vs concat, paired [95% t-interval]"])


def table(results: dict[str, Any], base: str, new: str, spec: list[tuple[str, str, str]]) -> str:
    """Markdown table: base, new, paired difference (new - base)."""
    a = {r["seed"]: r["probe"] for r in results[base]}
    b = {r["seed"]: r["probe"] for r in results[new]}
    seeds = sorted(set(a) & set(b))
    rows = []
    for label, key, better in spec:
        xa = [_get(a[s], key) for s in seeds]
        xb = [_get(b[s], key) for s in seeds]
        rows.append([label, better, format_mean_std(xa, 4), format_mean_std(xb, 4),
                     format_paired_difference(xb, xa, 4)])
    return (markdown_table(rows, ["metric", "better", base, new,
                                  f"Δ ({new} − {base}), paired [95% t-interval]"])
            + f"\n\nSeeds: {seeds} (n = {len(seeds)}); mean ± sample std.")


def timing(results: dict[str, Any]) -> str:
    return markdown_table(
        [[recipe, rows[0]["epochs"], format_mean_std([r["fit_s"] for r in rows], 4),
          format_mean_std([r["wall_s"] for r in rows], 4)]
         for recipe, rows in results.items()],
        ["recipe", "epochs", "Trainer.fit wall (s)", "whole command wall (s)"],
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    p.add_argument("--recipes", nargs="+",
                   default=[r for pair in PAIRS.values() for r in pair])
    p.add_argument("--runs-dir", default=None,
                   help="default runs/multimodal (runs/multimodal-quick)")
    p.add_argument("--set", nargs="*", default=[], help="extra recipe overrides key=value")
    p.add_argument("--force", action="store_true", help="retrain existing runs")
    p.add_argument("--cli", action="store_true",
                   help="train through `python -m contrastmix.cli pretrain` in a subprocess")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: seeds 0 1, one epoch of 2 batches (" + " ".join(QUICK) + ")")
    p.add_argument("--contrast-weights", type=float, nargs="+", default=None, metavar="W",
                   help=f"also sweep {SWEPT}'s method.contrast_weight against {SWEPT_BASE}")
    p.add_argument("--json", action="store_true", help="print the raw results as JSON")
    args = p.parse_args(argv)
    if any(w < 0 for w in args.contrast_weights or []):
        p.error("--contrast-weights: a weight is >= 0")
    results = collect(args)
    if args.json:
        print(dumps(results, indent=2))
        return
    print("Reproduce: " + reproduce_command(__file__, sys.argv[1:] if argv is None else argv))
    for name, (base, new) in PAIRS.items():
        if base in results and new in results:
            spec = TWO_TOWER_ROWS if name == "retrieval" else FUSION_ROWS
            print(f"\n### {name}: {base} vs {new}\n")
            print(table(results, base, new, spec))
    if args.contrast_weights:
        print(f"\n### contrast-weight sweep: {SWEPT} vs {SWEPT_BASE}\n")
        print(weight_table(results, args.contrast_weights))
    print("\n### wall time\n")
    print(timing(results))


if __name__ == "__main__":
    main()
