"""Train recipes over several seeds and report the probe as mean ± std (README results).

Each (recipe, seed) is pretrained in its own run directory (``RUNS_DIR/<recipe>_seed<S>``;
finished runs are kept, interrupted ones resumed: :func:`contrastmix.sweeps.train_if_missing`),
then probed with the linear probe and kNN (:func:`contrastmix.sweeps.probe`, i.e.
``contrastmix probe RUN --knn``, cached in the run). The script prints a markdown table (linear
probe accuracy, kNN accuracy, ``Trainer.fit`` wall time; mean ± sample std over seeds) and, for
contrastive runs, the proxy-task accuracy per epoch (the share of queries whose key beats every
real negative; docs/methods.md §1).

Example (the README's MoCo vs MoCHi table)::

    python benchmarks/sweeps/seed_sweep.py --recipes moco_mnist1d mochi_mnist1d --seeds 0 1 2
    python benchmarks/sweeps/seed_sweep.py --recipes moco_mnist1d --quick   # smoke run
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

from contrastmix._json import dumps
from contrastmix.sweeps import (
    add_sweep_arguments,
    format_mean_std,
    is_trained,
    markdown_table,
    mean_std,
    probe,
    reproduce_command,
    run_dir_for,
    run_summary,
    sweep_settings,
    train_if_missing,
)

#: ``--quick``: one short epoch per run, two seeds, runs kept apart from real ones.
QUICK = ["trainer.max_epochs=1", "trainer.limit_train_batches=3",
         "eval.knn_every_n_epochs=0"]


def proxy_curve(run: Path) -> dict[int, float]:
    """``{epoch: proxy_acc}`` from a run's merged ``metrics.csv`` (empty if not logged)."""
    curve: dict[int, float] = {}
    with (run / "metrics.csv").open() as fh:
        for row in csv.DictReader(fh):
            if row.get("proxy_acc"):
                curve[int(float(row["epoch"]))] = float(row["proxy_acc"])
    return curve


def _mean(values: list[float | None]) -> str:
    """The mean over the seeds that logged a value, or blank."""
    m = mean_std(values)[0]
    return "" if math.isnan(m) else f"{m:.3f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", nargs="+", required=True)
    add_sweep_arguments(p, runs_dir="runs/sweep", quick=QUICK, no_train=False)
    p.add_argument("--force", action="store_true", help="retrain existing runs")
    p.add_argument("--cli", action="store_true",
                   help="train through `python -m contrastmix.cli pretrain` in a subprocess")
    args = p.parse_args(argv)
    seeds, overrides, runs_dir = sweep_settings(args, runs_dir="runs/sweep", quick=QUICK)

    results: dict[str, list[dict]] = {}
    for recipe in args.recipes:
        for seed in seeds:
            out = run_dir_for(runs_dir, Path(recipe).stem, seed)
            fresh = args.force or not is_trained(out)
            t0 = time.time()
            train_if_missing(recipe, out, overrides, seed=seed, force=args.force, cli=args.cli)
            if fresh:
                print(f"{recipe} seed {seed}: trained in {time.time() - t0:.0f} s",
                      file=sys.stderr, flush=True)
            res = probe(out, knn=True)
            results.setdefault(recipe, []).append({
                "seed": seed, "run": str(out), "accuracy": res["accuracy"],
                "knn_accuracy": res.get("knn_accuracy"),
                "train_wall_s": run_summary(out)["wall_time_s"], "proxy": proxy_curve(out),
            })
    if args.json:
        print(dumps(results, indent=2))
        return
    print("Reproduce: " + reproduce_command(__file__, sys.argv[1:] if argv is None else argv))
    print()
    print(markdown_table(
        [[recipe, ", ".join(str(r["seed"]) for r in rows),
          format_mean_std([r["accuracy"] for r in rows], 4),
          format_mean_std([r["knn_accuracy"] for r in rows], 4),
          format_mean_std([r["train_wall_s"] for r in rows], 1)]
         for recipe, rows in results.items()],
        ["recipe", "seeds", "linear probe acc", "kNN acc", "train wall time (s)"],
    ))
    print("\nmean ± sample std (n - 1) over seeds.")
    epochs = sorted({e for rows in results.values() for r in rows for e in r["proxy"]})
    if epochs:
        picks = [e for e in epochs if e % 5 == 4 or e == epochs[0] or e == epochs[-1]]
        print("\nProxy-task accuracy (mean over seeds) by epoch:\n")
        print(markdown_table(
            [[recipe] + [_mean([r["proxy"].get(e) for r in rows]) for e in picks]
             for recipe, rows in results.items()],
            ["recipe"] + [f"ep {e + 1}" for e in picks],
        ))


if __name__ == "__main__":
    main()
