"""SupReMix, RnC and L1 on paired seeds, under both probe placements and RnC's own protocol,
with the SupReMix ablations (issue 16).

For every seed and dataset (rotated digits, balanced and long-tailed), these recipes are trained
in ``RUNS_DIR/<dataset>/<method>_seed<S>`` (the layout of ``regression_results.py``, so the two
scripts share runs):

* ``l1``: the encoder trained end to end with an L1 loss (the baseline);
* ``rnc``: our RnC variant (projector, L2-normalised projections, tau = 0.2);
* ``rnc_paper``: RnC as its paper runs it (no projector, unnormalised backbone features, tau = 2);
* ``supremix``: SupReMix (projector, normalised projections), and its ablations
  ``supremix_noproj`` (no projector), ``supremix_nomix`` (no mixtures: plain positives and
  negatives, same distance weights) and ``supremix_nomix_nodw`` (no mixtures, no distance
  weights).

One seed gives every method the same data split and batches. Each run is probed with
``contrastmix probe RUN`` (backbone features) and, when it has a projector, with
``--features projector-normalised`` (the space its loss acts on); both probes fit a ridge and an
L1-loss linear regressor, each with its penalty chosen on a validation split. Results are cached
in the run. The script prints mean ± sample std of the test MAE per method and probe, then the
mean paired difference of the comparisons behind the claims with its 95 % Student-t interval
(negative: the first method has the lower error).

Example (results/claims.md; 10-40 s per run on 2 cores with one thread, so the two datasets can
run side by side against the same RUNS_DIR)::

    python benchmarks/sweeps/regression_claims.py --seeds 0 1 2 3 4 5 6 7 8 9
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from contrastmix._json import dumps
from contrastmix.sweeps import (
    add_sweep_arguments,
    finished_run,
    format_mean_std,
    format_paired_difference,
    markdown_table,
    probe,
    reproduce_command,
    run_dir_for,
    sweep_settings,
)

DATASETS = ("rotated_digits", "rotated_digits_lt")
METHODS = ("l1", "rnc", "rnc_paper", "supremix", "supremix_noproj", "supremix_nomix",
           "supremix_nomix_nodw")
LABELS = {"l1": "L1", "rnc": "RnC", "rnc_paper": "RnC (paper protocol)", "supremix": "SupReMix",
          "supremix_noproj": "SupReMix, no projector", "supremix_nomix": "SupReMix, no mixtures",
          "supremix_nomix_nodw": "SupReMix, no mixtures, no distance weights"}
#: A probe: the feature space (``contrastmix probe --features``) and the regressor's loss.
PROBES = {"backbone/ridge": ("backbone", "ridge"), "backbone/L1": ("backbone", "l1"),
          "projector-normalised/ridge": ("projector-normalised", "ridge"),
          "projector-normalised/L1": ("projector-normalised", "l1")}
#: The comparisons behind the claims: (label, (method, probe), (method, probe)); an MAE
#: difference, first minus second.
COMPARISONS: tuple[tuple[str, tuple[str, str], tuple[str, str]], ...] = (
    ("SupReMix − L1, backbone (ridge)", ("supremix", "backbone/ridge"), ("l1", "backbone/ridge")),
    ("SupReMix − L1, SupReMix on its normalised projections (ridge)",
     ("supremix", "projector-normalised/ridge"), ("l1", "backbone/ridge")),
    ("RnC − L1, backbone (ridge)", ("rnc", "backbone/ridge"), ("l1", "backbone/ridge")),
    ("RnC − L1, RnC on its normalised projections (ridge)",
     ("rnc", "projector-normalised/ridge"), ("l1", "backbone/ridge")),
    ("SupReMix − RnC, backbone (ridge)", ("supremix", "backbone/ridge"),
     ("rnc", "backbone/ridge")),
    ("SupReMix − RnC, normalised projections (ridge)", ("supremix", "projector-normalised/ridge"),
     ("rnc", "projector-normalised/ridge")),
    ("RnC paper protocol − L1, L1-loss probes", ("rnc_paper", "backbone/L1"),
     ("l1", "backbone/L1")),
    ("SupReMix − RnC paper protocol, L1-loss probes", ("supremix", "backbone/L1"),
     ("rnc_paper", "backbone/L1")),
    ("RnC paper protocol − our RnC, backbone (L1-loss probe)", ("rnc_paper", "backbone/L1"),
     ("rnc", "backbone/L1")),
    ("SupReMix − no mixtures, backbone (ridge)", ("supremix", "backbone/ridge"),
     ("supremix_nomix", "backbone/ridge")),
    ("SupReMix − no mixtures, normalised projections (ridge)",
     ("supremix", "projector-normalised/ridge"), ("supremix_nomix", "projector-normalised/ridge")),
    ("no mixtures − no mixtures and no distance weights, backbone (ridge)",
     ("supremix_nomix", "backbone/ridge"), ("supremix_nomix_nodw", "backbone/ridge")),
    ("SupReMix − no mixtures and no distance weights, backbone (ridge)",
     ("supremix", "backbone/ridge"), ("supremix_nomix_nodw", "backbone/ridge")),
    ("SupReMix no projector − SupReMix, backbone (ridge)", ("supremix_noproj", "backbone/ridge"),
     ("supremix", "backbone/ridge")),
)
GROUPS = ("many", "medium", "few")
#: ``--quick``: one short epoch per run, two seeds, runs kept apart from real ones.
QUICK = ["trainer.max_epochs=1", "trainer.limit_train_batches=2"]


def _recipe(method: str, dataset: str) -> tuple[str, list[str]]:
    if dataset == "rotated_digits_lt":
        return f"{method}_rotated_digits", ["data.options.long_tailed=true"]
    return f"{method}_{dataset}", []


def _mae(res: dict[str, Any], loss: str, group: str | None) -> float | None:
    r = res if loss == "ridge" else res.get("l1_loss", {})
    if group is not None:
        r = r.get("groups", {}).get(group, {})
    v = r.get("mae")
    return None if v is None else float(v)


def run_one(method: str, dataset: str, seed: int, root: Path, overrides: list[str],
            train: bool) -> dict[str, dict[str, float | None]] | None:
    """Train (unless done) and probe one run: ``{probe: {"all"|group: MAE}}``, or ``None``
    when ``train`` is false and the run does not exist."""
    recipe, ov = _recipe(method, dataset)
    out = run_dir_for(root / dataset, method, seed)
    if finished_run(recipe, out, [*ov, *overrides], seed=seed, train=train) is None:
        return None
    has_projector = (out / "projector.pt").is_file()
    results: dict[str, dict[str, float | None]] = {}
    for name, (features, loss) in PROBES.items():
        if features != "backbone" and not has_projector:
            continue
        res = probe(out) if features == "backbone" else probe(out, features=features)
        results[name] = {"all": _mae(res, loss, None),
                         **{g: _mae(res, loss, g) for g in GROUPS if res.get("groups")}}
    return results


def _values(runs: list[dict | None], probe_name: str, group: str) -> list[float | None]:
    return [None if r is None or probe_name not in r else r[probe_name].get(group)
            for r in runs]


def report(results: dict[str, dict[str, list[dict | None]]]) -> str:
    """Markdown: per dataset, MAE per method and probe, then the paired comparisons."""
    lines: list[str] = []
    for ds, per_method in results.items():
        lt = ds == "rotated_digits_lt"
        groups = ["all", *(["many", "few"] if lt else [])]
        title = ("rotated digits, long-tailed train (test uniform)" if lt
                 else "rotated digits, balanced")
        rows: list[list[Any]] = []
        for m, runs in per_method.items():
            done = sum(r is not None for r in runs)
            for name in PROBES:
                if not any(r is not None and name in r for r in runs):
                    continue
                rows.append([LABELS.get(m, m), name, done,
                             *[format_mean_std(_values(runs, name, g), 2) for g in groups]])
        cols = ["method", "probe (features/loss)", "seeds",
                *["MAE" if g == "all" else f"{g}-shot MAE" for g in groups]]
        lines += [f"**{title}: test MAE (degrees)**\n", markdown_table(rows, cols), ""]
        rows = []
        for label, (ma, pa), (mb, pb) in COMPARISONS:
            if ma not in per_method or mb not in per_method:
                continue
            row: list[Any] = [label]
            row += [format_paired_difference(_values(per_method[ma], pa, g),
                                             _values(per_method[mb], pb, g), 2)
                    for g in groups]
            rows.append(row)
        cols = ["paired MAE difference (first − second)",
                *["all" if g == "all" else f"{g}-shot" for g in groups]]
        lines += [f"**{title}: paired differences, mean ± std [95 % interval]**\n",
                  markdown_table(rows, cols), ""]
    lines.append("mean ± sample std (n - 1) over seeds; a negative difference: the first method "
                 "has the lower error.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    add_sweep_arguments(p, runs_dir="runs/regression", quick=QUICK,
                        overrides=["trainer.num_threads=1"])
    p.add_argument("--markdown", type=Path, default=None, help="also write the tables here")
    args = p.parse_args(argv)
    seeds, overrides, root = sweep_settings(args, runs_dir="runs/regression", quick=QUICK)

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)

    results: dict[str, dict[str, list[dict | None]]] = {}
    for ds in args.datasets:
        for m in args.methods:
            for s in seeds:
                r = run_one(m, ds, s, root, overrides, not args.no_train)
                results.setdefault(ds, {}).setdefault(m, []).append(r)
                if r is not None:
                    print(f"{ds:18s} {m:20s} seed {s}: " + "  ".join(
                        f"{k} {v['all']:.3f}" for k, v in r.items() if v["all"] is not None),
                        file=sys.stderr, flush=True)
    if args.json:
        print(dumps({"seeds": seeds, "results": results}))
        return 0
    text = report(results)
    print(f"Reproduce: {reproduce_command(__file__, sys.argv[1:] if argv is None else argv)}\n")
    print(text)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
