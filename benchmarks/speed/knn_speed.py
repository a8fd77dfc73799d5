"""kNN evaluation speed: ``contrastmix.eval.knn.knn_predict`` vs ``KNeighborsClassifier``.

Goal (issue "Evaluation", benchmarks): 50,000 bank rows x 10,000 queries x 512 dims, k = 200,
tau = 0.1: ``knn_predict`` is >= 3x faster than
``KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric="cosine",
weights=lambda d: np.exp((1 - d) / tau))`` — the same weighting, since the cosine distance is
``d = 1 - s`` — with identical predictions (up to exact ties). The scikit-learn time includes
its ``fit`` (which only stores the bank); ours includes the normalisation. Both run in the same
process on the same float32 arrays; the timed calls alternate so load hits both alike.

Usage:
    python benchmarks/speed/knn_speed.py                  # full size
    python benchmarks/speed/knn_speed.py --quick          # small smoke run
    python benchmarks/speed/knn_speed.py --json
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from sklearn.neighbors import KNeighborsClassifier

from contrastmix._json import dumps
from contrastmix._timing import synchronize
from contrastmix.eval.knn import knn_predict


def make_data(
    n: int, m: int, d: int, c: int, separation: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian-mixture features (float32) with overlapping classes."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(c, d, generator=g) * separation
    y = torch.randint(0, c, (n + m,), generator=g)
    x = means[y] + torch.randn(n + m, d, generator=g)
    return x[:n].contiguous(), y[:n], x[n:].contiguous(), y[n:]


def time_ours(xtr, ytr, xte, k, tau, backend, device) -> tuple[float, np.ndarray]:
    xd, yd, qd = xtr.to(device), ytr.to(device), xte.to(device)
    synchronize(device)
    t0 = time.perf_counter()
    pred = knn_predict(xd, yd, qd, k, tau, backend=backend)
    synchronize(device)
    return time.perf_counter() - t0, pred.cpu().numpy()


def time_sklearn(xtr, ytr, xte, k, tau) -> tuple[float, np.ndarray]:
    def weight(dist: np.ndarray) -> np.ndarray:
        return np.exp((1.0 - dist) / tau)

    t0 = time.perf_counter()
    clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric="cosine", weights=weight)
    clf.fit(xtr.numpy(), ytr.numpy())
    pred = clf.predict(xte.numpy())
    return time.perf_counter() - t0, np.asarray(pred)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=50_000, help="bank rows")
    p.add_argument("--m", type=int, default=10_000, help="queries")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--separation", type=float, default=0.12)
    p.add_argument("-k", type=int, default=200)
    p.add_argument("--tau", type=float, default=0.1)
    p.add_argument("--backends", default=None,
                   help="comma list of knn backends (default: torch, bf16 where the CPU has "
                        "AVX512-BF16/AMX, faiss)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch and, via threadpoolctl, scikit-learn's BLAS/OpenMP "
                        "(0: library defaults)")
    p.add_argument("--quick", action="store_true", help="small sizes")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args()
    if a.quick:
        a.n, a.m, a.dim, a.k = 5000, 1000, 64, 50
    if a.threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(a.threads)
        threadpool_limits(limits=a.threads)
    if a.backends is None:
        from contrastmix.eval._knn_rescore import bf16_matmul_available

        a.backends = "torch,bf16,faiss" if bf16_matmul_available() else "torch,faiss"
    backends = [b for b in a.backends.split(",") if b]
    xtr, ytr, xte, yte = make_data(a.n, a.m, a.dim, a.classes, a.separation)
    for b in backends:  # warm-up (numba compiles the bf16 kernel on its first call)
        knn_predict(xtr[: 4 * a.k], ytr[: 4 * a.k], xte[:100], a.k, a.tau, backend=b)

    times: dict[str, list[float]] = {b: [] for b in [*backends, "sklearn"]}
    preds: dict[str, np.ndarray] = {}
    for _ in range(a.rounds):
        for b in backends:
            dt, preds[b] = time_ours(xtr, ytr, xte, a.k, a.tau, b, a.device)
            times[b].append(dt)
        dt, preds["sklearn"] = time_sklearn(xtr, ytr, xte, a.k, a.tau)
        times["sklearn"].append(dt)
    med = statistics.median
    y = yte.numpy()
    res: dict[str, object] = {
        "device": a.device, "threads": torch.get_num_threads(),
        "n": a.n, "m": a.m, "d": a.dim, "classes": a.classes, "k": a.k, "tau": a.tau,
        "sklearn_s": med(times["sklearn"]),
        "sklearn_accuracy": float((preds["sklearn"] == y).mean()),
        "goal_speedup": 3.0,
    }
    for b in backends:
        res[f"{b}_s"] = med(times[b])
        res[f"{b}_speedup"] = med(times["sklearn"]) / med(times[b])
        res[f"{b}_agreement"] = float((preds[b] == preds["sklearn"]).mean())
        res[f"{b}_mismatches"] = int((preds[b] != preds["sklearn"]).sum())
        res[f"{b}_accuracy"] = float((preds[b] == y).mean())
    if a.json:
        print(dumps(res))
        return
    print(f"device={a.device} threads={res['threads']} bank={a.n} queries={a.m} d={a.dim} "
          f"k={a.k} tau={a.tau}")
    print(f"sklearn KNeighborsClassifier(brute, cosine): {res['sklearn_s']:7.3f} s, "
          f"accuracy {100 * float(res['sklearn_accuracy']):.2f} %")  # type: ignore[arg-type]
    for b in backends:
        print(f"knn_predict backend={b:6s}: {res[f'{b}_s']:7.3f} s, "
              f"speed-up {res[f'{b}_speedup']:.2f}x (goal >= 3x), agreement with sklearn "
              f"{100 * float(res[f'{b}_agreement']):.3f} % "  # type: ignore[arg-type]
              f"({res[f'{b}_mismatches']} mismatches)")


if __name__ == "__main__":
    main()
