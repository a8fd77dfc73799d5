"""Neural collapse over training, ERM vs mixup on MNIST-1D (docs/methods.md §8; issue 6, item 5).

Trains ``recipes/erm_mnist1d.yaml`` and ``recipes/mixup_mnist1d.yaml`` (one seed after the
other, in ``OUT/<method>_seed<S>``, through :func:`contrastmix.sweeps.train_if_missing`, i.e.
:func:`contrastmix.train.pretrain.pretrain`, what ``contrastmix pretrain`` runs; finished runs
of the same recipe are kept, ``--force`` retrains), reads the NC1-NC4 / accuracy rows each run
logged every ``method.save_features_every`` epochs and its ``mixup_geometry.json``, prints the
curves and the mixup-geometry summary (mean ± std over seeds) and writes them to
``results/collapse.md``.

Usage::

    python benchmarks/sweeps/collapse_curves.py --seeds 0 1 2 [--threads 1] [--json]
    python benchmarks/sweeps/collapse_curves.py --quick    # smoke run, writes no results file
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

from contrastmix._json import dumps, loads
from contrastmix.sweeps import (
    format_mean_std,
    is_trained,
    markdown_table,
    mean_std,
    reproduce_command,
    run_dir_for,
    run_summary,
    train_if_missing,
)

RESULTS = Path(__file__).resolve().parents[2] / "results" / "collapse.md"
METHODS = ("erm", "mixup")
CURVE_KEYS = ("train_acc", "test_acc", "nc1", "nc2_equinorm", "nc2_equiangular", "nc3", "nc4")
#: ``--quick``: a short run that still logs NC rows and writes the geometry.
QUICK = ["trainer.max_epochs=2", "trainer.limit_train_batches=3",
         "method.save_features_every=1", "method.geometry_pairs=50"]
GEO_KEYS = ("same_class_cos_mean", "margin_zero_crossing", "off_plane_share_mean")


def _ms(values: list[float | None]) -> str:
    """Mean ± std over seeds of the finite values (a missing epoch or geometry is NaN/None)."""
    return format_mean_std([v if v is not None and math.isfinite(v) else None for v in values],
                           3)


def _mean(values: list[float | None]) -> str:
    m = mean_std(values)[0]
    return "n/a" if math.isnan(m) else f"{m:.3f}"


def _curves(run: Path) -> dict[int, dict[str, float]]:
    """``{completed_epoch: {metric: value}}`` from a run's merged ``metrics.csv``."""
    out: dict[int, dict[str, float]] = {}
    with (run / "metrics.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            if not row.get("nc1"):
                continue
            out[int(row["epoch"]) + 1] = {k: float(row[k]) for k in CURVE_KEYS if row.get(k)}
    return out


def train(
    method: str, seed: int, out_root: Path, threads: int, epochs: int | None,
    extra: list[str] | None = None, force: bool = False,
) -> dict:
    """Train one recipe unless its run is finished, and return its curves, geometry and wall
    time (NaN for a run that was already there)."""
    overrides = list(extra or [])
    if threads > 0:
        overrides.append(f"trainer.num_threads={threads}")
    if epochs is not None:
        overrides.append(f"trainer.max_epochs={epochs}")
    run = run_dir_for(out_root, method, seed)
    fresh = force or not is_trained(run)
    t0 = time.time()
    train_if_missing(f"{method}_mnist1d", run, overrides, seed=seed, force=force)
    wall = time.time() - t0 if fresh else float("nan")
    geo = loads((run / "mixup_geometry.json").read_text())
    return {"method": method, "seed": seed, "run": str(run), "wall_s": wall,
            "train_s": run_summary(run)["wall_time_s"],
            "curves": _curves(run), "geometry": geo, "overrides": overrides}


def render(results: list[dict], command: str, threads: int = 1) -> str:
    """The markdown of ``results/collapse.md``."""
    by = {m: [r for r in results if r["method"] == m] for m in METHODS}
    seeds = sorted({r["seed"] for r in results})
    lines = [
        "# Neural collapse: ERM vs mixup on MNIST-1D (docs/methods.md §8)",
        "",
        f"Recipes `recipes/erm_mnist1d.yaml`, `recipes/mixup_mnist1d.yaml` (cnn1d width 32, "
        f"SGD lr 0.05, weight decay 5e-4, cosine, batch 128, no augmentation besides mixup "
        f"with lambda ~ Beta(1, 1)); seeds {seeds}; mean ± std over seeds (n - 1 divisor).",
        "NC metrics on the clean train split (4000 signals) with the trained classifier, as "
        "`contrastmix.eval.collapse.neural_collapse` defines them "
        "(NC1 = Tr(Sigma_W Sigma_B^+) / C).",
        "",
        "Command:",
        "",
        f"    {command}",
        "",
        "## NC1-NC4 over training epochs",
        "",
    ]
    epochs = sorted({e for r in results for e in r["curves"]})
    lines.append(markdown_table(
        [[e, m, *(_ms([r["curves"].get(e, {}).get(k) for r in by[m]]) for k in CURVE_KEYS)]
         for e in epochs for m in METHODS],
        ["epoch", "method", *CURVE_KEYS],
    ))
    lines += [
        "",
        "## Mixup geometry at the end of training (Fisher, Meng & Papyan, ICLR 2024)",
        "",
        "Features of input mixes `lam x_a + (1 - lam) x_b` of train samples (500 same-class "
        "and 500 different-class pairs, lam at the centres of 10 bins): mean "
        "cos(h - mu_G, w_a) of same-class mixes; lam where the least-squares line of the "
        "different-class logit margin (w_a - w_b).h + b_a - b_b crosses 0; mean share of "
        "the energy of h - mu_G outside span{w_a, w_b} for different-class mixes.",
        "",
        markdown_table(
            [[m, *(_ms([r["geometry"][k] for r in by[m]]) for k in GEO_KEYS),
              _ms([r["geometry"]["margin_mean"][0] for r in by[m]]),
              _ms([r["geometry"]["margin_mean"][-1] for r in by[m]])] for m in METHODS],
            ["method", *GEO_KEYS, "margin at lam=0.05", "margin at lam=0.95"],
        ),
    ]
    lines += ["", "Per lambda bin (mean over seeds):", ""]
    centres = results[0]["geometry"]["bin_centers"]
    lines.append(markdown_table(
        [[m, q, *(_mean([r["geometry"][q][b] for r in by[m]]) for b in range(len(centres)))]
         for m in METHODS for q in ("same_class_cos", "margin_mean", "off_plane_share")],
        ["method", "quantity", *(f"{c:.2f}" for c in centres)],
    ))
    lines += ["", "## Wall time", ""]
    for m in METHODS:
        lines.append(
            f"- {m}: training {_ms([r['train_s'] for r in by[m]])} s per run "
            f"(whole run incl. data and geometry {_ms([r['wall_s'] for r in by[m]])} s), "
            f"2 shared (loaded) CPU cores, torch threads: {threads or 'default'}."
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default=None,
                   help="run directories go here (default runs/collapse, runs/collapse-quick)")
    p.add_argument("--threads", type=int, default=1,
                   help="trainer.num_threads (1 is fastest on a loaded 2-core machine; 0 = "
                   "torch default)")
    p.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs")
    p.add_argument("--set", nargs="*", default=[], help="extra recipe overrides key=value")
    p.add_argument("--force", action="store_true", help="retrain existing runs")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--no-write", action="store_true", help="do not write results/collapse.md")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 epochs of 3 batches, NC every epoch, 50 geometry pairs; "
                   "writes no results file")
    p.add_argument("--json", action="store_true", help="print the raw results as JSON")
    args = p.parse_args(argv)
    extra = [*(QUICK if args.quick else []), *args.set]
    out = Path(args.out or ("runs/collapse-quick" if args.quick else "runs/collapse"))

    results = []
    for seed in args.seeds:
        for m in METHODS:  # sequentially: one training process at a time
            r = train(m, seed, out, args.threads, args.epochs, extra, args.force)
            print(f"[collapse] {m} seed {seed}: {r['wall_s']:.1f} s", file=sys.stderr,
                  flush=True)
            results.append(r)
    command = reproduce_command(__file__, sys.argv[1:] if argv is None else argv)
    md = render(results, command, args.threads)
    if args.json:
        print(dumps(results, indent=2, default=str))
    else:
        print(md)
    if not (args.no_write or args.quick):
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(md)
        print(f"[collapse] wrote {args.results}", file=sys.stderr)


if __name__ == "__main__":
    main()
