"""MemoryBank search: faiss IVF / HNSW vs exact torch on a 1M x 128 clustered bank.

Goal: one training step's bank work (add 256 rows, then search 256 queries for k=64) at least
10x faster than the exact torch backend, at recall@64 >= 0.95 against the exact result.

Data: a mixture of 1000 von-Mises-Fisher-like clusters on the unit sphere (unit centres plus
isotropic Gaussian noise of total norm ~``--noise`` = 1.5, re-normalised: mean cosine to
the centre ~0.55); the bank is filled once
(build time reported separately), then every step adds 256 fresh rows (the ring keeps
wrapping, so the approximate indexes also pay for removing overwritten rows) and searches
256 fresh queries. All backends see the same stream, so their positions are comparable.

Index upkeep that does not happen every step is reported as an amortised cost per step:
IVF re-trains its centroids once per full turn of the ring (``size / batch`` steps), HNSW
rebuilds its graph once per turn (it cannot delete nodes).

Usage:
    python benchmarks/speed/bank_search.py             # 1M rows (run once: minutes, ~4 GB RAM)
    python benchmarks/speed/bank_search.py --quick     # 50k rows smoke run
    python benchmarks/speed/bank_search.py --json
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from contrastmix._json import dumps
from contrastmix.banks.memory_bank import MemoryBank


def clustered(n: int, centres: torch.Tensor, noise: float, g: torch.Generator) -> torch.Tensor:
    """``[n, d]`` unit vectors: a random centre plus Gaussian noise of norm ~``noise``."""
    d = centres.shape[1]
    which = torch.randint(0, centres.shape[0], (n,), generator=g)
    out = torch.empty(n, d)
    step = 1 << 16
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        x = centres[which[lo:hi]] + torch.randn(hi - lo, d, generator=g) * (noise / d**0.5)
        out[lo:hi] = F.normalize(x, dim=1)
    return out


def make_stream(size: int, dim: int, clusters: int, noise: float, batch: int, steps: int,
                seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(clusters, dim, generator=g), dim=1)
    return {
        "base": clustered(size, centres, noise, g),
        "adds": [clustered(batch, centres, noise, g) for _ in range(steps)],
        "queries": [clustered(batch, centres, noise, g) for _ in range(steps)],
    }


def run_backend(backend: str, stream: dict[str, Any], k: int, warmup: int,
                **kwargs: Any) -> dict[str, Any]:
    """Fill a bank, (re)build its index, then time ``add + search`` per step."""
    size, dim = stream["base"].shape
    bank = MemoryBank(size, dim, backend=backend, store_labels=False, store_indices=False,
                      **kwargs)
    t0 = time.perf_counter()
    bank.add(stream["base"])
    t_fill = time.perf_counter() - t0
    t0 = time.perf_counter()
    bank.rebuild_index()  # IVF: train + add; HNSW: graph build; exact: no-op
    t_build = time.perf_counter() - t0
    times, positions = [], []
    for i, (x, q) in enumerate(zip(stream["adds"], stream["queries"], strict=True)):
        t0 = time.perf_counter()
        bank.add(x)
        _, pos = bank.search(q, k)
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
        positions.append(pos)
    batch = stream["adds"][0].shape[0]
    steps_per_turn = size / batch
    ivf = getattr(bank._index, "index", None) if backend == "faiss-ivf" else None
    nlist = ivf.nlist if ivf is not None else bank.nlist  # the cells in use (auto by default)
    params = {"nlist": nlist, "nprobe": bank.nprobe} if backend == "faiss-ivf" else {
        "hnsw_m": bank.hnsw_m, "ef_construction": bank.ef_construction,
        "ef_search": bank.ef_search} if backend == "faiss-hnsw" else {}
    out = {
        "backend": backend,
        "params": params,
        "fill_s": t_fill,
        "build_s": t_build,
        "step_ms_median": 1e3 * statistics.median(times),
        "step_ms_min": 1e3 * min(times),
        # IVF re-trains / HNSW rebuilds once per turn of the ring: cost ~ build time
        "amortised_rebuild_ms_per_step": 1e3 * t_build / steps_per_turn,
        "positions": positions,
    }
    del bank
    gc.collect()
    return out


def recall(approx: list[torch.Tensor], exact: list[torch.Tensor], warmup: int) -> float:
    hits = total = 0
    for a, e in zip(approx[warmup:], exact[warmup:], strict=True):
        for ra, re in zip(a.tolist(), e.tolist(), strict=True):
            hits += len(set(ra) & set(re))
            total += len(re)
    return hits / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--noise", type=float, default=1.5,
                   help="norm of the Gaussian noise added to a unit centre (1.5: mean cosine "
                        "to the centre ~0.55, like a vMF with kappa ~160 in 128-d)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    # index parameters default to MemoryBank's defaults (None: not passed)
    p.add_argument("--nlist", type=int, default=None)
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument("--hnsw-m", type=int, default=None)
    p.add_argument("--ef-construction", type=int, default=None)
    p.add_argument("--ef-search", type=int, default=None)
    p.add_argument("--backends", default="faiss-ivf,faiss-hnsw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="50k rows, few steps")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--json-out", default=None, help="also write the JSON object to this file")
    a = p.parse_args()
    if a.quick:
        a.size, a.clusters, a.steps = 50_000, 100, 4
        a.nlist = a.nlist or 256
    torch.manual_seed(a.seed)
    stream = make_stream(a.size, a.dim, a.clusters, a.noise, a.batch, a.steps, a.seed)
    exact = run_backend("torch", stream, a.k, a.warmup)
    results = []
    for be in a.backends.split(","):
        names = {
            "faiss-ivf": {"nlist": a.nlist, "nprobe": a.nprobe},
            "faiss-hnsw": {"hnsw_m": a.hnsw_m, "ef_construction": a.ef_construction,
                           "ef_search": a.ef_search},
        }.get(be, {})
        kw: dict[str, Any] = {k: v for k, v in names.items() if v is not None}
        r = run_backend(be, stream, a.k, a.warmup, **kw)
        r["recall_at_k"] = recall(r["positions"], exact["positions"], a.warmup)
        r["speedup_median"] = exact["step_ms_median"] / r["step_ms_median"]
        r["speedup_incl_rebuild"] = exact["step_ms_median"] / (
            r["step_ms_median"] + r["amortised_rebuild_ms_per_step"])
        results.append(r)
    for r in (exact, *results):
        r.pop("positions")
    res = {
        "size": a.size, "dim": a.dim, "clusters": a.clusters, "noise": a.noise,
        "batch": a.batch, "k": a.k, "steps_timed": a.steps - a.warmup,
        "torch_threads": torch.get_num_threads(),
        "exact": exact, "approximate": results,
        "goal": "speedup >= 10 at recall >= 0.95",
    }
    if a.json_out:
        with open(a.json_out, "w") as f:
            f.write(dumps(res, indent=1))
    if a.json:
        print(dumps(res))
        return
    print(f"bank {a.size} x {a.dim}, {a.clusters} clusters (noise {a.noise}), step = add "
          f"{a.batch} + search {a.batch} queries, k={a.k}, {a.steps - a.warmup} timed steps")
    print(f"{'backend':<11} {'step ms':>9} {'speedup':>8} {'recall':>7} {'build s':>8} "
          f"{'rebuild ms/step':>16} {'speedup incl.':>14}  params")
    print(f"{'torch':<11} {exact['step_ms_median']:9.1f} {1.0:8.1f} {1.0:7.3f} "
          f"{exact['build_s']:8.1f} {0.0:16.1f} {1.0:14.1f}  exact")
    for r in results:
        print(f"{r['backend']:<11} {r['step_ms_median']:9.1f} {r['speedup_median']:8.1f} "
              f"{r['recall_at_k']:7.3f} {r['build_s']:8.1f} "
              f"{r['amortised_rebuild_ms_per_step']:16.2f} {r['speedup_incl_rebuild']:14.1f}  "
              f"{r['params']}")
    print("goal: speedup >= 10x at recall >= 0.95 (step = median add+search time)")


if __name__ == "__main__":
    main()
