"""Peak memory and time of SupReMix forward + backward, with SupCon as the baseline.

Each loss runs in a *fresh* subprocess, so its peak resident set size (``ru_maxrss``) is not
polluted by the other one. Reported per loss:

* ``peak_rss_mib``: the process's peak RSS after one forward + backward (includes the
  interpreter and torch itself);
* ``baseline_rss_mib``: peak RSS just before that call (interpreter + torch + inputs);
* ``loss_rss_mib``: their difference (what the loss added at its peak);
* ``time_s``: median wall time of one forward + backward over ``--reps`` further calls.

Target (docs/methods.md §2, issue): SupReMix at B = 256, V = 2, d = 128 stays below 1 GiB peak RSS.
For scale, the authors' dense construction would hold ``(V*B)^3 * d`` fp32 scalars.

Usage::

    python benchmarks/speed/supremix_memory.py [--batch 256 --views 2 --dim 128] [--json]
    python benchmarks/speed/supremix_memory.py --quick --json    # smoke run (B = 64)
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import subprocess
import sys
import time

from contrastmix._json import dumps, loads

GIB = 1024.0


def _maxrss_mib() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20


def _child(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    from contrastmix.losses.supcon import supcon_loss
    from contrastmix.losses.supremix import supremix_loss

    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(args.batch, args.views, args.dim, generator=g), dim=-1)
    labels = torch.rand(args.batch, generator=g) * 90.0  # continuous: every bracketing pair

    def step() -> float:
        f = feats.clone().requires_grad_(True)
        t0 = time.perf_counter()
        if args.loss == "supremix":
            loss = supremix_loss(f, labels, window=args.window, generator=g)
        else:
            loss = supcon_loss(f, labels, temperature=0.5)
        loss.backward()
        dt = time.perf_counter() - t0
        assert f.grad is not None and bool(torch.isfinite(f.grad).all())
        return dt

    base = _maxrss_mib()
    first = step()
    peak = _maxrss_mib()
    times = [step() for _ in range(args.reps)] or [first]
    print(
        dumps(
            {
                "loss": args.loss,
                "baseline_rss_mib": base,
                "peak_rss_mib": peak,
                "loss_rss_mib": peak - base,
                "time_s": statistics.median(times),
                "first_call_s": first,
            }
        )
    )


def _run(loss: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, __file__, "--child", loss,
        "--batch", str(args.batch), "--views", str(args.views), "--dim", str(args.dim),
        "--window", str(args.window), "--reps", str(args.reps), "--threads", str(args.threads),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--window", type=float, default=math.inf, help="SupReMix eps (default inf)")
    p.add_argument("--reps", type=int, default=3, help="timed calls after the first")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the children")
    p.add_argument("--quick", action="store_true", help="smoke run: B = 64, one timed call")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--child", choices=["supcon", "supremix"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.batch, args.reps = 64, 1
    if args.child:
        args.loss = args.child
        _child(args)
        return

    supcon = _run("supcon", args)
    supremix = _run("supremix", args)
    n = args.batch * args.views
    result = {
        "config": {
            "batch": args.batch, "views": args.views, "dim": args.dim, "window": args.window,
            "threads": args.threads, "reps": args.reps,
        },
        "supcon": supcon,
        "supremix": supremix,
        "peak_ratio": supremix["peak_rss_mib"] / supcon["peak_rss_mib"],
        "loss_rss_ratio": supremix["loss_rss_mib"] / max(supcon["loss_rss_mib"], 1e-9),
        "time_ratio": supremix["time_s"] / supcon["time_s"],
        "dense_mixture_tensor_gib": n**3 * args.dim * 4 / 2**30,
        "target_peak_mib": GIB,
        "target_met": supremix["peak_rss_mib"] < GIB,
    }
    if args.json:
        print(dumps(result, indent=2))
        return
    print(f"B={args.batch} V={args.views} d={args.dim} window={args.window} "
          f"threads={args.threads} (forward + backward, fresh process per loss)")
    print(f"{'loss':<10}{'peak RSS MiB':>14}{'baseline MiB':>14}{'added MiB':>12}{'time s':>10}")
    for r in (supcon, supremix):
        print(f"{r['loss']:<10}{r['peak_rss_mib']:>14.1f}{r['baseline_rss_mib']:>14.1f}"
              f"{r['loss_rss_mib']:>12.1f}{r['time_s']:>10.3f}")
    print(f"ratio supremix/supcon: peak {result['peak_ratio']:.2f}x, "
          f"added {result['loss_rss_ratio']:.1f}x, time {result['time_ratio']:.1f}x")
    print(f"(a dense (V*B)^3 x d fp32 mixture tensor would be "
          f"{result['dense_mixture_tensor_gib']:.1f} GiB)")
    print(f"target: SupReMix peak RSS < {GIB:.0f} MiB -> "
          f"{'met' if result['target_met'] else 'NOT met'}")


if __name__ == "__main__":
    main()
