"""Neural collapse over training, ERM vs mixup on MNIST-1D (docs/methods.md §8; issue 6, item 5).

Trains ``recipes/erm_mnist1d.yaml`` and ``recipes/mixup_mnist1d.yaml`` (one seed after the
other, through :func:`contrastmix.train.pretrain.pretrain`, i.e. what ``contrastmix pretrain``
runs), reads the NC1-NC4 / accuracy rows each run logged every ``method.save_features_every``
epochs and its ``mixup_geometry.json``, prints the curves and the mixup-geometry summary
(mean +- std over seeds) and writes them to ``results/collapse.md``.

Usage::

    .venv/bin/python benchmarks/collapse_curves.py --seeds 0 1 2 [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

METHODS = ("erm", "mixup")
CURVE_KEYS = ("train_acc", "test_acc", "nc1", "nc2_equinorm", "nc2_equiangular", "nc3", "nc4")
GEO_KEYS = ("same_class_cos_mean", "margin_zero_crossing", "off_plane_share_mean")


def _ms(values: list[float]) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


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
    reuse: bool = False,
) -> dict:
    """Train one recipe (or, with ``reuse``, read a finished run of the same recipe) and return
    its curves, geometry and wall time."""
    from omegaconf import OmegaConf

    from contrastmix.recipe import load_recipe
    from contrastmix.train.pretrain import pretrain

    overrides = [f"seed={seed}", "trainer.enable_progress_bar=false"]
    if threads > 0:
        overrides.append(f"trainer.num_threads={threads}")
    if epochs is not None:
        overrides.append(f"trainer.max_epochs={epochs}")
    cfg = load_recipe(ROOT / "recipes" / f"{method}_mnist1d.yaml", overrides)
    run = out_root / f"{method}_seed{seed}"
    finished = (run / "run.json").is_file() and (run / "mixup_geometry.json").is_file()
    if reuse and finished and (run / "config.yaml").read_text() == OmegaConf.to_yaml(cfg):
        wall = float("nan")
    else:
        if run.exists():
            shutil.rmtree(run)
        t0 = time.time()
        pretrain(cfg, run)
        wall = time.time() - t0
    geo = json.loads((run / "mixup_geometry.json").read_text())
    return {"method": method, "seed": seed, "run": str(run), "wall_s": wall,
            "train_s": json.loads((run / "run.json").read_text())["wall_time_s"],
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
        "`contrastmix.eval.collapse.neural_collapse` defines them (NC1 = Tr(Sigma_W Sigma_B^+) / C).",
        "",
        "Command:",
        "",
        f"    {command}",
        "",
        "## NC1-NC4 over training epochs",
        "",
    ]
    epochs = sorted({e for r in results for e in r["curves"]})
    head = "| epoch | method | " + " | ".join(CURVE_KEYS) + " |"
    lines += [head, "|" + "---|" * (len(CURVE_KEYS) + 2)]
    for e in epochs:
        for m in METHODS:
            vals = [_ms([r["curves"].get(e, {}).get(k, float("nan")) for r in by[m]])
                    for k in CURVE_KEYS]
            lines.append(f"| {e} | {m} | " + " | ".join(vals) + " |")
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
        "| method | " + " | ".join(GEO_KEYS) + " | margin at lam=0.05 | margin at lam=0.95 |",
        "|" + "---|" * (len(GEO_KEYS) + 3),
    ]
    for m in METHODS:
        vals = [_ms([r["geometry"][k] for r in by[m]]) for k in GEO_KEYS]
        lo = _ms([r["geometry"]["margin_mean"][0] for r in by[m]])
        hi = _ms([r["geometry"]["margin_mean"][-1] for r in by[m]])
        lines.append(f"| {m} | " + " | ".join(vals) + f" | {lo} | {hi} |")
    lines += ["", "Per lambda bin (mean over seeds):", ""]
    centres = results[0]["geometry"]["bin_centers"]
    lines += ["| method | quantity | " + " | ".join(f"{c:.2f}" for c in centres) + " |",
              "|" + "---|" * (len(centres) + 2)]
    for m in METHODS:
        for q in ("same_class_cos", "margin_mean", "off_plane_share"):
            cols = []
            for b in range(len(centres)):
                v = [r["geometry"][q][b] for r in by[m] if r["geometry"][q][b] is not None]
                cols.append(f"{statistics.mean(v):.3f}" if v else "n/a")
            lines.append(f"| {m} | {q} | " + " | ".join(cols) + " |")
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
    p.add_argument("--out", default="runs/collapse", help="run directories go here")
    p.add_argument("--threads", type=int, default=1,
                   help="trainer.num_threads (1 is fastest on a loaded 2-core machine; 0 = "
                   "torch default)")
    p.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs")
    p.add_argument("--results", default=str(ROOT / "results" / "collapse.md"))
    p.add_argument("--no-write", action="store_true", help="do not write results/collapse.md")
    p.add_argument("--json", action="store_true", help="print the raw results as JSON")
    p.add_argument("--reuse", action="store_true",
                   help="reuse finished runs under --out whose config.yaml is the same recipe")
    args = p.parse_args(argv)

    results = []
    for seed in args.seeds:
        for m in METHODS:  # sequentially: one training process at a time
            r = train(m, seed, Path(args.out), args.threads, args.epochs, args.reuse)
            print(f"[collapse] {m} seed {seed}: {r['wall_s']:.1f} s", flush=True)
            results.append(r)
    command = ".venv/bin/python benchmarks/collapse_curves.py " + " ".join(
        a for a in (sys.argv[1:] if argv is None else argv))
    md = render(results, command.strip(), args.threads)
    print(md)
    if not args.no_write:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(md)
        print(f"[collapse] wrote {args.results}")
    if args.json:
        print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
