"""Linear-probe solver speed: ``contrastmix.eval.probe.fit_logistic`` vs ``LogisticRegression``.

Goal (issue "Evaluation", benchmarks; re-measured after issue 16): on 50,000 x 512 features with
10 classes, one fit at a fixed penalty is faster than
``sklearn.linear_model.LogisticRegression(solver="lbfgs")`` at the same penalty **and equal
accuracy**: both get the *same* standardised matrix, the same L2 strength
(``penalty = 1 / (C n)``), ``max_iter`` and ``tol``. The defaults are the probe's since issue 16
(float64, ``tol=1e-6`` on the max gradient entry, 1000 iterations, ``solver="auto"``), at which
both reach the optimum; ``--dtype float32 --tol 1e-4 --max-iter 100 --solver lbfgs`` is the
earlier setting (scikit-learn's defaults). Whether our fit converged is reported. The timings
are interleaved in rounds so machine load hits both alike.

Data: a Gaussian mixture with 10 classes in 512 dimensions, class means ~ N(0, s^2 I) and unit
noise (``--separation s``, default 0.12 -> ~83 % test accuracy, i.e. overlapping classes).

Usage:
    python benchmarks/speed/probe_speed.py                 # full size
    python benchmarks/speed/probe_speed.py --quick         # small smoke run
    python benchmarks/speed/probe_speed.py --json
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from contrastmix._json import dumps
from contrastmix._timing import synchronize
from contrastmix.eval.probe import fit_logistic


def make_data(
    n: int, m: int, d: int, c: int, separation: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardised (train statistics) Gaussian-mixture features, float32."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(c, d, generator=g) * separation
    y = torch.randint(0, c, (n + m,), generator=g)
    x = means[y] + torch.randn(n + m, d, generator=g)
    mu, sd = x[:n].mean(0), x[:n].std(0)
    x = ((x - mu) / sd).contiguous()
    return x[:n], y[:n], x[n:], y[n:]


def time_ours(xtr, ytr, xte, yte, penalty, max_iter, tol, dtype, device, solver, precondition):
    xd, yd = xtr.to(device), ytr.to(device)
    synchronize(device)
    t0 = time.perf_counter()
    fit = fit_logistic(xd, yd, penalty, max_iter, tol, dtype=dtype, solver=solver,
                       precondition=precondition)
    synchronize(device)
    dt = time.perf_counter() - t0
    logits = xte.to(device, dtype) @ fit.weight.T + fit.bias
    acc = float((logits.argmax(1).cpu() == yte).double().mean())
    return dt, acc, fit.n_iter, fit.converged


def time_sklearn(xtr, ytr, xte, yte, penalty, max_iter, tol):
    n = xtr.shape[0]
    clf = LogisticRegression(C=1.0 / (penalty * n), solver="lbfgs", max_iter=max_iter, tol=tol)
    xn, yn = xtr.numpy(), ytr.numpy()  # the same matrix and dtype as ours
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(xn, yn)
    dt = time.perf_counter() - t0
    acc = float((clf.predict(xte.numpy()) == yte.numpy()).mean())
    return dt, acc, int(np.max(clf.n_iter_))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=50_000, help="training rows")
    p.add_argument("--m", type=int, default=10_000, help="test rows")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--separation", type=float, default=0.12)
    p.add_argument("--penalty", type=float, default=None, help="default 1/n (sklearn C=1)")
    p.add_argument("--max-iter", type=int, default=1000)
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--solver", choices=["auto", "newton", "lbfgs"], default="auto")
    p.add_argument("--no-precondition", action="store_true",
                   help="plain L-BFGS (the preconditioner costs one n x d x d product per fit "
                        "and cannot help on these isotropic features)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch and, via threadpoolctl, scikit-learn's BLAS/OpenMP "
                        "(0: library defaults)")
    p.add_argument("--quick", action="store_true", help="small sizes")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args()
    if a.quick:
        a.n, a.m, a.dim, a.rounds = 5000, 1000, 64, 2
    if a.threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(a.threads)
        threadpool_limits(limits=a.threads)
    penalty = a.penalty if a.penalty is not None else 1.0 / a.n
    dtype = getattr(torch, a.dtype)
    xtr, ytr, xte, yte = make_data(a.n, a.m, a.dim, a.classes, a.separation)
    xtr, xte = xtr.to(dtype), xte.to(dtype)
    # warm-up (allocator, thread pools) on a slice
    fit_logistic(xtr[:2000].to(a.device), ytr[:2000].to(a.device), penalty, 5, a.tol, dtype=dtype)

    ours_t: list[float] = []
    sk_t: list[float] = []
    for _ in range(a.rounds):
        dt, acc_ours, it_ours, conv = time_ours(
            xtr, ytr, xte, yte, penalty, a.max_iter, a.tol, dtype, a.device, a.solver,
            not a.no_precondition,
        )
        ours_t.append(dt)
        dt, acc_sk, it_sk = time_sklearn(xtr, ytr, xte, yte, penalty, a.max_iter, a.tol)
        sk_t.append(dt)
    med = statistics.median
    res = {
        "device": a.device,
        "threads": torch.get_num_threads(),
        "n": a.n, "m": a.m, "d": a.dim, "classes": a.classes,
        "penalty": penalty, "sklearn_C": 1.0 / (penalty * a.n),
        "max_iter": a.max_iter, "tol": a.tol, "dtype": a.dtype, "solver": a.solver,
        "precondition": not a.no_precondition,
        "ours_converged": conv,
        "ours_s": med(ours_t), "sklearn_s": med(sk_t),
        "ours_min_s": min(ours_t), "sklearn_min_s": min(sk_t),
        "speedup": med(sk_t) / med(ours_t),
        "speedup_min": min(sk_t) / min(ours_t),
        "ours_iter": it_ours, "sklearn_iter": it_sk,
        "ours_accuracy": acc_ours, "sklearn_accuracy": acc_sk,
        "accuracy_gap_points": 100 * abs(acc_ours - acc_sk),
        "goal_speedup": 1.0, "goal_accuracy_gap_points": 0.0,
    }
    if a.json:
        print(dumps(res))
        return
    print(f"device={a.device} threads={res['threads']} n={a.n} d={a.dim} C={a.classes} "
          f"penalty={penalty:.3g} (sklearn C={res['sklearn_C']:.3g}) max_iter={a.max_iter} "
          f"tol={a.tol} dtype={a.dtype} solver={a.solver}")
    print(f"fit_logistic (torch LBFGS): {res['ours_s']:7.3f} s median, {res['ours_min_s']:.3f} s "
          f"min, {it_ours} iterations (converged: {conv}), test acc {100 * acc_ours:.2f} %")
    print(f"sklearn LogisticRegression: {res['sklearn_s']:7.3f} s median, "
          f"{res['sklearn_min_s']:.3f} s min, {it_sk} iterations, test acc {100 * acc_sk:.2f} %")
    print(f"speed-up: {res['speedup']:.2f}x median, {res['speedup_min']:.2f}x min (goal > 1x); "
          f"accuracy gap {res['accuracy_gap_points']:.2f} points (goal: equal accuracy)")


if __name__ == "__main__":
    main()
