"""MoCHi vs MoCo on paired seeds, with the class oracle and several hard-set sizes (issue 16).

For every seed, ``moco_mnist1d``, ``mochi_mnist1d`` and ``mochi_oracle_mnist1d`` (MoCHi with
same-class queue rows left out of the hard set) are trained in ``RUNS_DIR/N<n>/<recipe>_seed<S>``
(MoCo once, in ``RUNS_DIR/moco``). The seeds pair: MoCHi draws its mixing from its own
generator, so for one seed all three see the same batches and views (tests/test_claim_options.py).
Each run is probed with ``contrastmix probe RUN --knn`` (cached in the run). The script prints
mean ± sample std per configuration and the mean paired difference against MoCo (and oracle
against MoCHi at the same N) with its 95 % Student-t interval.

Example (results/claims.md; ~50 s per run on 2 cores with one thread per run, so two seed
halves can run side by side against the same RUNS_DIR)::

    python benchmarks/sweeps/mochi_claims.py --seeds 0 1 2 3 4 5 6 7 8 9 --num-hard 1024 256 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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

MOCO, MOCHI, ORACLE = "moco_mnist1d", "mochi_mnist1d", "mochi_oracle_mnist1d"
METRICS = {"accuracy": "linear probe acc", "knn_accuracy": "kNN acc"}
#: ``--quick``: one short epoch per run, two seeds, runs kept apart from real ones.
QUICK = ["trainer.max_epochs=1", "trainer.limit_train_batches=3",
         "eval.knn_every_n_epochs=0"]


def _run(recipe: str, out: Path, overrides: list[str], seed: int,
         train: bool) -> dict[str, float | None] | None:
    if finished_run(recipe, out, overrides, seed=seed, train=train) is None:
        return None
    res = probe(out, knn=True)
    return {k: res.get(k) for k in METRICS}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-hard", type=int, nargs="+", default=[1024],
                   help="hard-set sizes N (method.num_hard) for MoCHi and the oracle")
    add_sweep_arguments(p, runs_dir="runs/mochi_claims", quick=QUICK,
                        overrides=["trainer.num_threads=1"])
    args = p.parse_args(argv)
    seeds, overrides, root = sweep_settings(args, runs_dir="runs/mochi_claims", quick=QUICK)
    train = not args.no_train
    res: dict[str, list[dict[str, float | None] | None]] = {"MoCo": []}
    for seed in seeds:
        res["MoCo"].append(_run(MOCO, run_dir_for(root / "moco", MOCO, seed),
                                overrides, seed, train))
        for n in args.num_hard:
            ov = [*overrides, f"method.num_hard={n}"]
            for name, recipe in ((f"MoCHi N={n}", MOCHI), (f"MoCHi+oracle N={n}", ORACLE)):
                res.setdefault(name, []).append(
                    _run(recipe, run_dir_for(root / f"N{n}", recipe, seed), ov, seed, train))
    if args.json:
        print(dumps({"seeds": seeds, "results": res}, indent=2))
        return

    def values(name: str, key: str) -> list[float | None]:
        return [r[key] if r else None for r in res[name]]

    def paired(a: str, b: str, key: str) -> str:  # seeds missing on either side drop out
        return format_paired_difference(values(a, key), values(b, key), 4)

    print("Reproduce: " + reproduce_command(__file__, sys.argv[1:] if argv is None else argv))
    print()
    rows = []
    for name in res:
        n_runs = sum(r is not None for r in res[name])
        row = [name, n_runs]
        for key in METRICS:
            row.append(format_mean_std(values(name, key), 4))
            if name == "MoCo":
                row.append("")
            elif "oracle" in name:
                mochi = name.replace("MoCHi+oracle", "MoCHi")
                row.append(f"{paired(name, 'MoCo', key)}; vs MoCHi {paired(name, mochi, key)}")
            else:
                row.append(paired(name, "MoCo", key))
        rows.append(row)
    head = ["configuration", "runs"]
    for label in METRICS.values():
        head += [label, f"Δ {label} vs MoCo, paired [95% t-interval]"]
    print(markdown_table(rows, head))
    print("\nmean ± sample std (n - 1) over seeds; Δ: mean ± std of the paired differences.")


if __name__ == "__main__":
    main()
