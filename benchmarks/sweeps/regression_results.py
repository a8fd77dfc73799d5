"""Regression results table: L1, L1 + C-Mixup, SupCon (binned), RnC, SupReMix over seeds.

Trains every bundled recipe ``{method}_{dataset}`` for each seed through the API
(:func:`contrastmix.train.pretrain.pretrain`, exactly what ``contrastmix pretrain`` runs), probes
each run with :func:`contrastmix.eval.evaluate.probe_run` (what ``contrastmix probe RUN --json`` prints),
and prints a markdown table of mean +- std (sample std, ``ddof = 1``) over seeds of the
linear-probe MAE, the geometric-mean error and the distance Spearman; for ``rotated_digits_lt``
(the long-tailed variant, ``data.options.long_tailed=true``) also the many/medium/few-shot MAE.

Runs are sequential (the machine is shared). A run directory that already holds a
``probe.json`` is reused, so an interrupted sweep can be restarted with the same command.

Usage::

    python benchmarks/regression_results.py --datasets rotated_digits rotated_digits_lt \\
        --seeds 0 1 2 --runs-dir runs/regression [--markdown results/regression.md] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

METHODS = ("l1", "l1_cmixup", "supcon", "rnc", "supremix")
DATASETS = ("rotated_digits", "rotated_digits_lt", "mnist1d_reg", "diabetes")
LABELS = {"l1": "L1", "l1_cmixup": "L1 + C-Mixup", "supcon": "SupCon (binned)", "rnc": "RnC",
          "supremix": "SupReMix", "raw_inputs": "(ridge on raw inputs, no training)"}


def _recipe_and_overrides(method: str, dataset: str) -> tuple[str, list[str]]:
    if dataset == "rotated_digits_lt":
        return f"{method}_rotated_digits", ["data.options.long_tailed=true"]
    return f"{method}_{dataset}", []


def run_one(method: str, dataset: str, seed: int, runs_dir: Path, extra: list[str]) -> dict:
    """Train (unless done) and probe one run; returns the probe dict plus timings."""
    from contrastmix.recipe import load_recipe
    from contrastmix.eval.evaluate import probe_run
    from contrastmix.train.pretrain import pretrain

    out = runs_dir / dataset / method / f"seed{seed}"
    cached = out / "probe.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    recipe, ov = _recipe_and_overrides(method, dataset)
    cfg = load_recipe(recipe, [*ov, f"seed={seed}", "trainer.enable_progress_bar=false", *extra])
    if out.exists():  # an interrupted run: start over
        import shutil

        shutil.rmtree(out)
    t0 = time.time()
    pretrain(cfg, out)
    t1 = time.time()
    res = probe_run(out)
    t2 = time.time()
    summary = json.loads((out / "run.json").read_text())
    res.update({"train_wall_s": summary["wall_time_s"], "run_wall_s": round(t1 - t0, 2),
                "probe_wall_s": round(t2 - t1, 2), "seed": seed, "recipe": recipe,
                "overrides": [*ov, f"seed={seed}", *extra]})
    cached.write_text(json.dumps(res))
    return res


def raw_reference(dataset: str, runs_dir: Path) -> dict:
    """The same ridge probe on the raw (flattened) inputs: no training, a reference row."""
    from contrastmix.recipe import load_recipe
    from contrastmix.data.registry import build_data
    from contrastmix.eval.ordering import distance_spearman
    from contrastmix.eval.probe import linear_probe

    cached = runs_dir / dataset / "raw_inputs" / "probe.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    recipe, ov = _recipe_and_overrides("l1", dataset)
    cfg = load_recipe(recipe, ov)
    data = build_data(cfg.data)
    tr = data.train.x.flatten(1).float(), data.train.y.float()  # type: ignore[attr-defined]
    te = data.test.x.flatten(1).float(), data.test.y.float()  # type: ignore[attr-defined]
    res = linear_probe(
        tr[0], tr[1], te[0], te[1], task="regression", val_fraction=cfg.eval.probe_val_fraction,
        seed=cfg.seed, groups=data.test_groups,
        group_names=list(data.group_names) if data.group_names else None,
    )
    out = {k: res[k] for k in ("mae", "mse", "gmean") if k in res}
    if "groups" in res:
        out["groups"] = {g: {k: float(v) if k != "n" else int(v) for k, v in m.items()}
                         for g, m in res["groups"].items()}
    out.update({k: float(v) for k, v in out.items() if k != "groups"})
    out["spearman"] = float(distance_spearman(te[0], te[1], seed=cfg.seed))
    out["train_wall_s"] = 0.0
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(out))
    return out


def _fmt(dataset: str) -> str:
    return "{:.4f}" if dataset == "mnist1d_reg" else "{:.2f}"


def _ms(values: list[float], fmt: str = "{:.2f}") -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "-"
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return fmt.format(mean)
    std = statistics.stdev(vals)
    return f"{fmt.format(mean)} ± {fmt.format(std)}"


def table(results: dict[str, dict[str, list[dict]]]) -> str:
    """Markdown tables (one per dataset) from ``results[dataset][method] = [probe dicts]``."""
    lines: list[str] = []
    for ds, per_method in results.items():
        lt = ds == "rotated_digits_lt"
        f = _fmt(ds)
        groups = ("many", "medium", "few")
        has_groups = any(r.get("groups") for rs in per_method.values() for r in rs)
        title = "rotated digits, long-tailed train (test uniform)" if lt else ds.replace("_", " ")
        lines.append(f"**{title}**\n")
        head = "| method | seeds | MAE | GM | Spearman |"
        sep = "|---|---|---|---|---|"
        if has_groups:
            head += " many MAE | medium MAE | few MAE |"
            sep += "---|---|---|"
        head += " train s/run |"
        sep += "---|"
        lines += [head, sep]
        for m, rs in per_method.items():
            row = (f"| {LABELS.get(m, m)} | {len(rs) if m != 'raw_inputs' else '-'} | "
                   f"{_ms([r['mae'] for r in rs], f)} | {_ms([r['gmean'] for r in rs], f)} | "
                   f"{_ms([r['spearman'] for r in rs], '{:.3f}')} |")
            if has_groups:
                for g in groups:
                    gm = [r.get("groups", {}).get(g, {}).get("mae") for r in rs]
                    row += " " + _ms(gm, f) + " |"
            wall = statistics.fmean([r["train_wall_s"] for r in rs])
            row += f" {wall:.0f} |" if m != "raw_inputs" else " - |"
            lines.append(row)
        if has_groups:
            counts = next(iter(per_method.values()))[0].get("groups", {})
            lines.append("")
            lines.append("test samples per group: " + ", ".join(
                f"{g} {counts[g]['n']}" for g in groups if g in counts))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["rotated_digits", "rotated_digits_lt"],
                   choices=DATASETS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs-dir", default="runs/regression", type=Path)
    p.add_argument("--set", nargs="*", default=[], dest="extra",
                   help="extra recipe overrides for every run (key=value)")
    p.add_argument("--markdown", type=Path, default=None, help="also write the tables here")
    p.add_argument("--json", action="store_true", help="print all probe results as JSON")
    p.add_argument("--no-raw", action="store_true",
                   help="skip the reference row (ridge probe on the raw inputs)")
    args = p.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    results: dict[str, dict[str, list[dict]]] = {}
    start = time.time()
    for ds in args.datasets:
        if not args.no_raw:
            results.setdefault(ds, {})["raw_inputs"] = [raw_reference(ds, args.runs_dir)]
        for m in args.methods:
            for s in args.seeds:
                r = run_one(m, ds, s, args.runs_dir, list(args.extra))
                results.setdefault(ds, {}).setdefault(m, []).append(r)
                print(f"[{time.time() - start:7.0f}s] {ds:18s} {m:10s} seed {s}: "
                      f"MAE {r['mae']:.3f}  GM {r['gmean']:.3f}  "
                      f"spearman {r['spearman']:.3f}  (train {r['train_wall_s']:.0f}s)",
                      file=sys.stderr, flush=True)
    text = table(results)
    print(text)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    if args.json:
        slim: dict[str, Any] = {
            ds: {m: [{k: r[k] for k in ("seed", "mae", "mse", "gmean", "spearman", "groups",
                                        "train_wall_s") if k in r} for r in rs]
                 for m, rs in pm.items()}
            for ds, pm in results.items()
        }
        print(json.dumps(slim))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
