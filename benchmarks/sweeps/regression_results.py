"""Regression results table: L1, L1 + C-Mixup, SupCon (binned), RnC, SupReMix over seeds.

Trains every bundled recipe ``{method}_{dataset}`` for each seed in
``RUNS_DIR/<dataset>/<method>_seed<S>`` (:func:`contrastmix.sweeps.train_if_missing`, i.e.
:func:`contrastmix.train.pretrain.pretrain`, what ``contrastmix pretrain`` runs; finished runs
are kept, interrupted ones resumed), probes each run (:func:`contrastmix.sweeps.probe`: what
``contrastmix probe RUN --json`` prints, cached in the run's ``probe.json``), and prints a
markdown table of mean ± std (sample std, ``ddof = 1``) over seeds of the linear-probe MAE, the
geometric-mean error and the distance Spearman; for ``rotated_digits_lt`` (the long-tailed
variant, ``data.options.long_tailed=true``) also the many/medium/few-shot MAE.

Runs are sequential (the machine is shared); an interrupted sweep is restarted with the same
command.

Usage::

    python benchmarks/sweeps/regression_results.py --datasets rotated_digits rotated_digits_lt \\
        --seeds 0 1 2 --runs-dir runs/regression [--markdown results/regression.md] [--json]
    python benchmarks/sweeps/regression_results.py --quick     # smoke run (diabetes, 2 seeds)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from contrastmix._json import dumps, loads
from contrastmix.sweeps import (
    format_mean_std,
    markdown_table,
    mean_std,
    probe,
    reproduce_command,
    run_dir_for,
    run_summary,
    train_if_missing,
)

METHODS = ("l1", "l1_cmixup", "supcon", "rnc", "supremix")
#: Protocol and ablation variants (issue 16), bundled for rotated digits only.
VARIANTS = ("rnc_paper", "supremix_noproj", "supremix_nomix", "supremix_nomix_nodw")
DATASETS = ("rotated_digits", "rotated_digits_lt", "mnist1d_reg", "diabetes")
LABELS = {"l1": "L1", "l1_cmixup": "L1 + C-Mixup", "supcon": "SupCon (binned)", "rnc": "RnC",
          "supremix": "SupReMix", "rnc_paper": "RnC (paper protocol)",
          "supremix_noproj": "SupReMix, no projector", "supremix_nomix": "SupReMix, no mixtures",
          "supremix_nomix_nodw": "SupReMix, no mixtures, no distance weights",
          "raw_inputs": "(ridge on raw inputs, no training)"}


def _recipe_and_overrides(method: str, dataset: str) -> tuple[str, list[str]]:
    if dataset == "rotated_digits_lt":
        return f"{method}_rotated_digits", ["data.options.long_tailed=true"]
    return f"{method}_{dataset}", []


def run_one(method: str, dataset: str, seed: int, runs_dir: Path, extra: list[str],
            force: bool = False, features: str = "backbone") -> dict:
    """Train (unless done) and probe one run; returns the probe dict plus the seed and the
    ``Trainer.fit`` wall time.

    ``features`` is ``contrastmix probe --features``; a run without a projector (the L1
    baselines, ``method.projector: false``) is probed on its backbone, and the result says so
    (``"features"``)."""
    recipe, ov = _recipe_and_overrides(method, dataset)
    out = train_if_missing(recipe, run_dir_for(runs_dir / dataset, method, seed), [*ov, *extra],
                           seed=seed, force=force)
    if features != "backbone" and (out / "projector.pt").is_file():
        res = probe(out, features=features)
    else:
        res = probe(out)
    return {**res, "seed": seed, "recipe": recipe,
            "train_wall_s": run_summary(out)["wall_time_s"]}


def raw_reference(dataset: str, runs_dir: Path) -> dict:
    """The same ridge probe on the raw (flattened) inputs: no training, a reference row."""
    from contrastmix.data.registry import build_data
    from contrastmix.eval.ordering import distance_spearman
    from contrastmix.eval.probe import linear_probe
    from contrastmix.recipe import load_recipe

    cached = runs_dir / dataset / "raw_inputs" / "probe.json"
    if cached.is_file():
        return loads(cached.read_text())
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
    cached.write_text(dumps(out))
    return out


def _digits(dataset: str) -> int:
    return 4 if dataset == "mnist1d_reg" else 2


def _ms(values: list[float | None], digits: int, single: bool = False) -> str:
    """Mean ± std over seeds; ``single``: the one value of the reference row, no std."""
    if single:
        m = mean_std(values)[0]
        return "-" if math.isnan(m) else f"{m:.{digits}f}"
    return format_mean_std(values, digits)


def table(results: dict[str, dict[str, list[dict]]]) -> str:
    """Markdown tables (one per dataset) from ``results[dataset][method] = [probe dicts]``."""
    lines: list[str] = []
    for ds, per_method in results.items():
        d = _digits(ds)
        # the shot groups some run of this dataset has (balanced data has no few-shot bin)
        groups = [g for g in ("many", "medium", "few")
                  if any(g in (r.get("groups") or {}) for rs in per_method.values() for r in rs)]
        has_groups = bool(groups)
        title = ("rotated digits, long-tailed train (test uniform)" if ds == "rotated_digits_lt"
                 else ds.replace("_", " "))
        columns = ["method", "seeds", "MAE", "GM", "Spearman"]
        if has_groups:
            columns += [f"{g} MAE" for g in groups]
        columns.append("train s/run")
        rows = []
        for m, rs in per_method.items():
            raw = m == "raw_inputs"
            spaces = sorted({r.get("features", "backbone") for r in rs}) if not raw else []
            label = LABELS.get(m, m) + (f" ({', '.join(spaces)})" if spaces != ["backbone"]
                                        and spaces else "")
            row = [label, "-" if raw else len(rs),
                   _ms([r["mae"] for r in rs], d, raw), _ms([r["gmean"] for r in rs], d, raw),
                   _ms([r["spearman"] for r in rs], 3, raw)]
            if has_groups:
                row += [_ms([r.get("groups", {}).get(g, {}).get("mae") for r in rs], d, raw)
                        for g in groups]
            row.append("-" if raw else f"{mean_std([r['train_wall_s'] for r in rs])[0]:.0f}")
            rows.append(row)
        lines += [f"**{title}**\n", markdown_table(rows, columns)]
        if has_groups:
            counts = next(iter(per_method.values()))[0].get("groups", {})
            lines.append("")
            lines.append("test samples per group: " + ", ".join(
                f"{g} {counts[g]['n']}" for g in groups if g in counts))
        lines.append("")
    lines.append("mean ± sample std (n - 1) over seeds.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=None, choices=DATASETS,
                   help="default rotated_digits rotated_digits_lt (--quick: diabetes)")
    p.add_argument("--methods", nargs="+", default=None, choices=METHODS + VARIANTS,
                   help="default all (--quick: l1 rnc)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1 2")
    p.add_argument("--runs-dir", default=None, type=Path,
                   help="default runs/regression (runs/regression-quick)")
    p.add_argument("--set", nargs="*", default=[], dest="extra",
                   help="extra recipe overrides for every run (key=value)")
    p.add_argument("--force", action="store_true", help="retrain existing runs")
    p.add_argument("--features", default="backbone",
                   choices=["backbone", "projector", "projector-normalised"],
                   help="the probed features (contrastmix probe --features); runs without a "
                   "projector are probed on the backbone, and their rows say so")
    p.add_argument("--markdown", type=Path, default=None, help="also write the tables here")
    p.add_argument("--json", action="store_true", help="print all probe results as JSON")
    p.add_argument("--no-raw", action="store_true",
                   help="skip the reference row (ridge probe on the raw inputs)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: diabetes, L1 and RnC, seeds 0 1, one epoch of 2 batches")
    args = p.parse_args(argv)
    q = args.quick
    datasets = args.datasets or (["diabetes"] if q else ["rotated_digits", "rotated_digits_lt"])
    methods = args.methods or (["l1", "rnc"] if q else list(METHODS))
    seeds = args.seeds or ([0, 1] if q else [0, 1, 2])
    runs_dir = args.runs_dir or Path("runs/regression-quick" if q else "runs/regression")
    extra = [*(["trainer.max_epochs=1", "trainer.limit_train_batches=2"] if q else []),
             *args.extra]

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    results: dict[str, dict[str, list[dict]]] = {}
    start = time.time()
    for ds in datasets:
        if not args.no_raw:
            results.setdefault(ds, {})["raw_inputs"] = [raw_reference(ds, runs_dir)]
        for m in methods:
            for s in seeds:
                r = run_one(m, ds, s, runs_dir, extra, args.force, args.features)
                results.setdefault(ds, {}).setdefault(m, []).append(r)
                print(f"[{time.time() - start:7.0f}s] {ds:18s} {m:10s} seed {s}: "
                      f"MAE {r['mae']:.3f}  GM {r['gmean']:.3f}  "
                      f"spearman {r['spearman']:.3f}  (train {r['train_wall_s']:.0f}s)",
                      file=sys.stderr, flush=True)
    text = table(results)
    command = reproduce_command(__file__, sys.argv[1:] if argv is None else argv)
    if args.json:
        slim: dict[str, Any] = {
            ds: {m: [{k: r[k] for k in ("seed", "features", "mae", "mse", "gmean", "spearman",
                                        "groups", "train_wall_s") if k in r} for r in rs]
                 for m, rs in pm.items()}
            for ds, pm in results.items()
        }
        print(dumps(slim))
    else:
        print(f"Reproduce: {command}\n")
        print(text)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
