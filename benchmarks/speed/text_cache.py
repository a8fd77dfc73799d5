"""Frozen MiniLM text tower: per-caption embedding cache vs re-encoding every batch.

Claim (``contrastmix/models/text.py``): with a frozen text tower the 384-d sentence embeddings
depend only on the caption string, and a captioned dataset repeats few captions (digits-captions:
1347 training captions, 60 unique), so caching them makes every epoch after the first cost a
dictionary lookup instead of a transformer pass. Baseline: the same encoder with
``cache=False`` (what a plain frozen ``SentenceTransformer.encode`` per batch costs). Both run
in the same process on the same batches; their outputs are checked to be equal.

Measured: wall time of the text tower's forward (sentence embeddings + projection) over the
training captions in batches, for the first epoch (cache filling) and the following ones.

Usage:
    python benchmarks/speed/text_cache.py                # 3 epochs, batch 128
    python benchmarks/speed/text_cache.py --epochs 2 --json
    python benchmarks/speed/text_cache.py --quick --json  # smoke run: 2 epochs of 256 captions
"""

from __future__ import annotations

import argparse
import time

import torch

from contrastmix._json import dumps
from contrastmix.data.digits_captions import load_digits_captions
from contrastmix.models.text import MiniLMTextEncoder


def run_epoch(encoder: MiniLMTextEncoder, captions: list[str], batch_size: int) -> float:
    """Seconds to embed all captions once, in shuffled batches (fixed order per call)."""
    order = torch.randperm(len(captions), generator=torch.Generator().manual_seed(0)).tolist()
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(order), batch_size):
            encoder([captions[j] for j in order[i : i + batch_size]])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 epochs over the first 256 captions")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    _, captions, _ = load_digits_captions("train", seed=0)
    if args.quick:
        args.epochs, captions = 2, captions[:256]
    torch.manual_seed(0)
    cached = MiniLMTextEncoder(proj_dim=128, cache=True)
    baseline = MiniLMTextEncoder(proj_dim=128, cache=False)
    baseline.projection.load_state_dict(cached.projection.state_dict())
    probe = captions[:32]
    torch.testing.assert_close(cached(probe), baseline(probe), atol=1e-5, rtol=0)
    cached.clear_cache()

    base_t, cache_t = [], []
    for _ in range(args.epochs):  # alternate so machine load hits both alike
        base_t.append(run_epoch(baseline, captions, args.batch_size))
        cache_t.append(run_epoch(cached, captions, args.batch_size))
    steady_base = sum(base_t[1:]) / max(1, len(base_t) - 1)
    steady_cache = sum(cache_t[1:]) / max(1, len(cache_t) - 1)
    result = {
        "captions": len(captions),
        "unique_captions": len(set(captions)),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "epochs": args.epochs,
        "baseline_epoch_s": base_t,
        "cached_epoch_s": cache_t,
        "first_epoch_speedup": base_t[0] / cache_t[0],
        "steady_epoch_speedup": steady_base / steady_cache if args.epochs > 1 else None,
    }
    if args.json:
        print(dumps(result))
        return
    print(f"{len(captions)} captions ({len(set(captions))} unique), batch {args.batch_size}")
    for e, (b, c) in enumerate(zip(base_t, cache_t, strict=True)):
        print(f"epoch {e}: no cache {b:.3f} s | cache {c:.4f} s | ratio {b / c:.1f}x")
    if args.epochs > 1:
        print(f"steady-state speed-up (epochs >= 1): {steady_base / steady_cache:.0f}x")


if __name__ == "__main__":
    main()
