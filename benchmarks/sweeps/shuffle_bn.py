"""MoCo with and without Shuffle-BN under 2-process DDP, on paired seeds (issue 16).

MoCo v1/v2 (He et al., CVPR 2020) shuffle the key batch across GPUs before the key encoder, so
that a query and its key never share BatchNorm statistics; without it, the paper reports, the
model "cheats" the pretext task through the statistics and learns a worse representation. On one
device Shuffle-BN is a no-op, so this sweep runs every run as two DDP processes (``gloo`` on the
CPU, ``trainer.devices=2 trainer.strategy=ddp``), launched through ``contrastmix pretrain`` (the
command a user types: Lightning starts the second rank from it). For each seed,
``moco_mnist1d`` is trained in ``RUNS_DIR/shuffle_bn_<off|on>/moco_mnist1d_seed<S>`` with
``method.shuffle_bn`` off and on; the shuffle draws come from the method's own generator, so the
two runs of a seed see the same batches and views. Each run is probed with ``contrastmix probe
RUN --knn`` (cached in the run); the script prints mean ± sample std and the paired difference
(on − off) with its 95 % Student-t interval, for the linear probe, kNN and the last epoch's
proxy-task accuracy (the share of queries whose key beats every negative: the "cheating"
signal).

Example (results/claims.md; each run uses both cores)::

    python benchmarks/sweeps/shuffle_bn.py --seeds 0 1 2 3 4 5 6 7 8 9
"""

from __future__ import annotations

import argparse
import csv
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

RECIPE = "moco_mnist1d"
DDP = ["trainer.devices=2", "trainer.strategy=ddp", "trainer.num_threads=1"]
METRICS = {"accuracy": "linear probe acc", "knn_accuracy": "kNN acc",
           "proxy_acc": "proxy-task acc (last epoch)"}
#: ``--quick``: one short epoch per run, two seeds, runs kept apart from real ones.
QUICK = ["trainer.max_epochs=1", "trainer.limit_train_batches=3",
         "eval.knn_every_n_epochs=0"]


def _last_proxy(run: Path) -> float | None:
    """The last logged epoch value of ``proxy_acc`` in ``run/metrics.csv``."""
    try:
        with open(run / "metrics.csv", newline="") as f:
            values = [row["proxy_acc"] for row in csv.DictReader(f) if row.get("proxy_acc")]
    except (FileNotFoundError, KeyError):
        return None
    return float(values[-1]) if values else None


def _run(out: Path, overrides: list[str], seed: int, train: bool) -> dict[str, Any] | None:
    if finished_run(RECIPE, out, overrides, seed=seed, train=train, cli=True) is None:
        return None
    res = probe(out, knn=True)
    return {"accuracy": res.get("accuracy"), "knn_accuracy": res.get("knn_accuracy"),
            "proxy_acc": _last_proxy(out)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sweep_arguments(p, runs_dir="runs/shuffle_bn", quick=QUICK)
    args = p.parse_args(argv)
    seeds, overrides, root = sweep_settings(args, runs_dir="runs/shuffle_bn", quick=QUICK)
    overrides = [*DDP, *overrides]
    res: dict[str, list[dict[str, Any] | None]] = {"off": [], "on": []}
    for seed in seeds:
        for name in res:
            out = run_dir_for(root / f"shuffle_bn_{name}", RECIPE, seed)
            r = _run(out, [*overrides, f"method.shuffle_bn={str(name == 'on').lower()}"], seed,
                     not args.no_train)
            res[name].append(r)
            if r is not None:
                print(f"seed {seed} shuffle_bn {name}: " + "  ".join(
                    f"{k} {v:.4f}" for k, v in r.items() if v is not None),
                    file=sys.stderr, flush=True)
    if args.json:
        print(dumps({"seeds": seeds, "results": res}))
        return 0

    def values(name: str, key: str) -> list[float | None]:
        return [None if r is None else r.get(key) for r in res[name]]

    rows = []
    for key, label in METRICS.items():
        off, on = values("off", key), values("on", key)
        rows.append([label, format_mean_std(off, 4), format_mean_std(on, 4),
                     format_paired_difference(on, off, 4)])
    print(f"Reproduce: {reproduce_command(__file__, sys.argv[1:] if argv is None else argv)}\n")
    print(markdown_table(rows, ["metric", "Shuffle-BN off", "Shuffle-BN on",
                                "Δ (on − off), paired [95% t-interval]"]))
    print(f"\nSeeds: {seeds}; mean ± sample std; 2-process DDP (gloo) per run.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
