"""Train recipes over several seeds and report the probe as mean ± std (README results).

Each (recipe, seed) is pretrained in its own run directory, then probed with
``contrastmix probe --knn``; the script prints a markdown table (linear-probe accuracy, kNN
accuracy, wall time) and, for contrastive runs, the proxy-task accuracy per epoch (the share of
queries whose key beats every real negative; docs/methods.md §1).

Example (the README's MoCo vs MoCHi table)::

    python benchmarks/seed_sweep.py --recipes moco_mnist1d mochi_mnist1d --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.4f} ± {sd:.4f}"


def _proxy_curve(run: Path) -> dict[int, float]:
    curve: dict[int, float] = {}
    with (run / "metrics.csv").open() as fh:
        for row in csv.DictReader(fh):
            if row.get("proxy_acc"):
                curve[int(float(row["epoch"]))] = float(row["proxy_acc"])
    return curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", nargs="+", required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs-dir", default="runs/sweep")
    p.add_argument("--set", dest="overrides", nargs="*", default=[])
    p.add_argument("--json", action="store_true", help="print the raw results as JSON")
    args = p.parse_args()

    cli = [sys.executable, "-m", "contrastmix.cli"]
    results: dict[str, list[dict]] = {}
    for recipe in args.recipes:
        for seed in args.seeds:
            out = Path(args.runs_dir) / f"{Path(recipe).stem}_seed{seed}"
            if not (out / "backbone.pt").is_file():
                t0 = time.time()
                subprocess.run(
                    [*cli, "pretrain", recipe, "--out", str(out), "--set", f"seed={seed}",
                     "trainer.enable_progress_bar=false", *args.overrides],
                    check=True, stdout=subprocess.DEVNULL,
                )
                print(f"{recipe} seed {seed}: trained in {time.time() - t0:.0f} s", flush=True)
            res = subprocess.run([*cli, "probe", str(out), "--json", "--knn"], check=True,
                                 capture_output=True, text=True)
            probe = json.loads(res.stdout.strip().splitlines()[-1])
            summary = json.loads((out / "run.json").read_text())
            results.setdefault(recipe, []).append({
                "seed": seed, "accuracy": probe["accuracy"],
                "knn_accuracy": probe.get("knn_accuracy"),
                "train_wall_s": summary["wall_time_s"], "proxy": _proxy_curve(out),
            })
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print("\n| recipe | seeds | linear probe acc | kNN acc | train wall time (s) |")
    print("|---|---|---|---|---|")
    for recipe, rows in results.items():
        print(f"| {recipe} | {', '.join(str(r['seed']) for r in rows)} | "
              f"{_mean_std([r['accuracy'] for r in rows])} | "
              f"{_mean_std([r['knn_accuracy'] for r in rows if r['knn_accuracy'] is not None])} | "
              f"{_mean_std([r['train_wall_s'] for r in rows])} |")
    epochs = sorted({e for rows in results.values() for r in rows for e in r["proxy"]})
    if epochs:
        picks = [e for e in epochs if e % 5 == 4 or e == epochs[0] or e == epochs[-1]]
        print("\nProxy-task accuracy (mean over seeds) by epoch:\n")
        print("| recipe | " + " | ".join(f"ep {e + 1}" for e in picks) + " |")
        print("|---|" + "---|" * len(picks))
        for recipe, rows in results.items():
            vals = []
            for e in picks:
                xs = [r["proxy"][e] for r in rows if e in r["proxy"]]
                vals.append(f"{statistics.mean(xs):.3f}" if xs else "")
            print(f"| {recipe} | " + " | ".join(vals) + " |")


if __name__ == "__main__":
    main()
