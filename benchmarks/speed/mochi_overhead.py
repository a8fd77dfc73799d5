"""MoCHi overhead: loss forward+backward of MoCHi(N, s, s') vs plain MoCo InfoNCE.

Goal (docs/methods.md §1, fast path): at B=256, K=16384, d=128, (N, s, s') = (1024, 1024, 128)
the MoCHi loss forward+backward takes <= 2.0x the MoCo InfoNCE forward+backward, measured in
the same run. The materialised path (``B × (s+s') × d`` synthetic vectors) is timed for context.

Usage:
    python benchmarks/speed/mochi_overhead.py            # full size
    python benchmarks/speed/mochi_overhead.py --quick    # small smoke run
    python benchmarks/speed/mochi_overhead.py --json

Each measurement is its own function (``time_moco_loss``, ``time_mochi_loss``,
``time_mochi_materialised_loss``, ``time_mochi_parts``, ``time_training_steps``). The training
step is the MNIST-1D recipe's full optimiser step (two augmented views, encoder and momentum
encoder, loss, backward, SGD, enqueue) at queue 16384 with MoCHi(1024, 1024, 128) vs MoCo —
goal <= 1.10x; the two are timed in alternating blocks (``--rounds`` x ``--block`` steps each).
``--recipe-runs R`` also times R real runs (Lightning, data loader, logging) of each MNIST-1D
recipe at the same queue. A floor is printed beside them: the bare dot products ``n_i·n_j`` of
one draw's type-1 pairs (``time_pair_dots_floor``; on the benchmark's draws, and with
``--recipe-runs`` on those of one step of a real run), the queue rows that any exact fast path
must read, as a share of MoCo's step. The process keeps freed memory as ``contrastmix
pretrain --keep-freed-memory`` does (:func:`contrastmix.train.allocator.keep_freed_memory`;
``--default-malloc`` to leave glibc's defaults).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from contrastmix._json import dumps
from contrastmix._timing import time_calls
from contrastmix.losses.mochi import MoCHiLoss
from contrastmix.losses.moco import moco_infonce
from contrastmix.mixing import mochi as mochi_mod


@dataclass
class Setup:
    """Inputs of one loss call."""

    query: torch.Tensor
    key: torch.Tensor
    queue: torch.Tensor
    num_hard: int
    num_mix: int
    num_query_mix: int
    temperature: float = 0.2


def make_setup(
    b: int, k: int, d: int, n: int, s: int, s2: int, device: str, seed: int = 0
) -> Setup:
    g = torch.Generator().manual_seed(seed)

    def unit(rows: int) -> torch.Tensor:
        return F.normalize(torch.randn(rows, d, generator=g), dim=1).to(device)

    return Setup(unit(b), unit(b), unit(k), n, s, s2)


def time_moco_loss(st: Setup, device: str, repeats: int) -> list[float]:
    """Baseline: ``moco_infonce`` forward + backward (gradient w.r.t. the query)."""

    def step() -> None:
        q = st.query.detach().requires_grad_()
        moco_infonce(q, st.key, st.queue, st.temperature).backward()

    return time_calls(step, device, repeats)


def time_mochi_loss(st: Setup, device: str, repeats: int) -> list[float]:
    """``MoCHiLoss`` (fast path) forward + backward."""
    loss = MoCHiLoss(st.temperature, st.num_hard, st.num_mix, st.num_query_mix)
    gen = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        q = st.query.detach().requires_grad_()
        loss(q, st.key, st.queue, generator=gen).backward()

    return time_calls(step, device, repeats)


def time_mochi_materialised_loss(st: Setup, device: str, repeats: int) -> list[float]:
    """Materialise ``[B, s+s', d]`` negatives, then InfoNCE over them (context only)."""
    gen = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        q = st.query.detach().requires_grad_()
        h = mochi_mod.mochi_negatives(
            q, st.queue, st.num_hard, st.num_mix, st.num_query_mix, generator=gen
        )
        logits = torch.cat(
            [(q * st.key).sum(1, keepdim=True), q @ st.queue.T, torch.bmm(h, q.unsqueeze(2))
             .squeeze(2)], dim=1) / st.temperature
        target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        F.cross_entropy(logits, target).backward()

    return time_calls(step, device, repeats)


def time_mochi_parts(st: Setup, device: str, repeats: int) -> dict[str, float]:
    """Median seconds of the fast path's parts: top-N + draws, type-1 norms, bare top-N; and
    ``pair_dots_floor`` (:func:`time_pair_dots_floor` on the same draws) where it runs."""
    gen = torch.Generator(device=device).manual_seed(0)
    sims = st.query @ st.queue.T

    def draws() -> object:
        return mochi_mod.mochi_draws(sims, st.num_hard, st.num_mix, st.num_query_mix,
                                     generator=gen)

    dr = mochi_mod.mochi_draws(sims, st.num_hard, st.num_mix, st.num_query_mix, generator=gen)
    floor = time_pair_dots_floor(st.queue, dr.pos_i, dr.pos_j, repeats)
    return {
        **({"pair_dots_floor": floor} if floor is not None else {}),
        "topk_and_draws": statistics.median(time_calls(draws, device, repeats)),
        "type1_norms": statistics.median(
            time_calls(lambda: mochi_mod._pair_norms(st.queue, dr.pos_i, dr.pos_j, dr.alpha,
                                                1 - dr.alpha), device, repeats)
        ),
        "plain_topk": statistics.median(
            time_calls(lambda: torch.topk(sims, min(st.num_hard, sims.shape[1]), dim=1),
                  device, repeats)
        ),
    }


def _pair_dots_kernel() -> Callable[..., None] | None:
    """A bare numba loop, parallel over queries: ``out[b, t] = n_{pos_i[b, t]} · n_{pos_j[b, t]}``
    (no weights, no prefetch); None without numba."""
    try:
        import numba
    except ImportError:  # pragma: no cover - numba ships with umap-learn
        return None

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def pair_dots(queue, pos_i, pos_j, out):  # type: ignore[no-untyped-def]
        for b in numba.prange(pos_i.shape[0]):
            for t in range(pos_i.shape[1]):
                x = queue[pos_i[b, t]]
                y = queue[pos_j[b, t]]
                acc = np.float32(0.0)
                for c in range(x.shape[0]):
                    acc += x[c] * y[c]
                out[b, t] = acc

    return pair_dots  # type: ignore[no-any-return]


def time_pair_dots_floor(queue: torch.Tensor, pos_i: torch.Tensor, pos_j: torch.Tensor,
                         repeats: int) -> float | None:
    """Median seconds of the bare dot products ``n_i·n_j`` of the type-1 pairs ``pos_i``/
    ``pos_j`` (``[B, s]`` rows of ``queue``; :func:`_pair_dots_kernel`, torch's thread count):
    the queue rows that any exact fast path must read, without the norms, weights or anything
    else. A floor under the type-1 norms, to set against the training step's budget; None off
    the CPU or without numba."""
    kern = _pair_dots_kernel() if queue.device.type == "cpu" else None
    if kern is None:
        return None
    from contrastmix._numba import run_parallel

    q = queue.detach().float().contiguous().numpy()
    pi, pj = pos_i.contiguous().numpy(), pos_j.contiguous().numpy()
    out = np.empty(pi.shape, np.float32)
    return statistics.median(time_calls(lambda: run_parallel(kern, q, pi, pj, out), "cpu", repeats))


def _method_overrides(method: str, queue: int, mix: tuple[int, int, int]) -> list[str]:
    """Recipe overrides of both timings: queue ``queue``; for MoCHi, ``mix`` = (N, s, s') with
    mixing from the first step."""
    n, s, s2 = mix
    return [f"method.queue_size={queue}"] + (
        [f"method.num_hard={n}", f"method.num_mix={s}", f"method.num_query_mix={s2}",
         "method.warmup_epochs=0"] if method == "mochi" else [])


def make_training_step(
    method: str, queue: int, device: str, *, batch: int = 256,
    mix: tuple[int, int, int] = (1024, 1024, 128),
) -> Callable[[], None]:
    """One optimiser step of the MNIST-1D recipe (views, encoders, loss, backward, SGD, enqueue)
    with a full queue of ``queue`` keys; ``method`` is ``"moco"`` or ``"mochi"`` (mixing on)."""
    from omegaconf import OmegaConf

    from contrastmix.data.registry import build_data
    from contrastmix.methods import get_method
    from contrastmix.recipe import load_recipe

    cfg = load_recipe(f"{method}_mnist1d", _method_overrides(method, queue, mix))
    data = build_data(cfg.data)
    plain = OmegaConf.to_container(cfg, resolve=True)
    module = get_method(cfg.method.name)(plain, data).to(device)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(0)
    keys = F.normalize(torch.randn(queue, module.queue.dim, generator=g), dim=1).to(device)
    module.queue.add(keys, indices=torch.arange(10_000_000, 10_000_000 + queue, device=device))
    opt = torch.optim.SGD(list(module.backbone.parameters()) + list(module.projector.parameters()),
                          lr=0.01, momentum=0.9)
    x, y = data.train.x[:batch].to(device), data.train.y[:batch].to(device)  # type: ignore[attr-defined]
    idx = torch.arange(batch, device=device)

    def step() -> None:
        loss, _ = module.contrastive_step(x, y, idx, step=0, total_steps=1, epoch=0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def time_training_steps(
    queue: int, device: str, rounds: int, block: int, *, batch: int = 256,
    mix: tuple[int, int, int] = (1024, 1024, 128),
) -> tuple[list[float], list[float], list[float]]:
    """MoCo and MoCHi training steps (:func:`make_training_step`) timed in alternating blocks
    of ``block`` steps, ``rounds`` times, so that a change of machine speed hits both alike.
    Each block builds its module afresh and drops it after, so that only one method is alive
    at a time, as in training (with both modules alive side by side, the ratios we measured
    came out higher).

    Returns:
        ``(moco_times, mochi_times, round_ratios)``: seconds per step, and per round the
        ratio of the two blocks' medians.
    """
    t_moco: list[float] = []
    t_mochi: list[float] = []
    ratios: list[float] = []
    for _ in range(rounds):
        a = time_calls(make_training_step("moco", queue, device, batch=batch), device, block)
        b = time_calls(make_training_step("mochi", queue, device, batch=batch, mix=mix), device,
                  block)
        t_moco += a
        t_mochi += b
        ratios.append(statistics.median(b) / statistics.median(a))
    return t_moco, t_mochi, ratios


def time_recipe_runs(
    queue: int, rounds: int, epochs: int, *, mix: tuple[int, int, int] = (1024, 1024, 128),
) -> tuple[list[float], list[float], list[float], tuple[torch.Tensor, ...] | None]:
    """Real runs of the MNIST-1D recipes (``contrastmix.train.pretrain.pretrain``, Lightning,
    data loader, logging) at queue ``queue``, MoCo and MoCHi alternately, ``rounds`` times
    ``epochs`` epochs each (mixing from the first step, online kNN off), in this process and
    so under its malloc setting (:func:`main` applies
    :func:`contrastmix.train.allocator.keep_freed_memory` unless ``--default-malloc``, as
    ``contrastmix pretrain --keep-freed-memory`` does). Step times are taken once the queue is
    full.

    Returns:
        ``(moco_times, mochi_times, round_ratios, draws)``: the first three as
        :func:`time_training_steps`; ``draws`` = ``(queue, pos_i, pos_j)`` of one step of the
        first MoCHi run with a full queue (the loss's coefficients call, copied), or None.
    """
    import logging
    import tempfile

    import pytorch_lightning as pl

    import contrastmix.losses.mochi as mochi_loss
    from contrastmix.recipe import load_recipe
    from contrastmix.train.pretrain import pretrain

    class Clock(pl.Callback):
        """Start times of the training batches: their differences are whole steps as a run
        sees them (data, forward, backward, optimiser, enqueue, logging). At step
        ``capture_at`` it asks :func:`capture` for that step's draws."""

        def __init__(self, capture_at: int | None) -> None:
            self.starts: list[float] = []
            self.capture_at = capture_at

        def on_train_batch_start(self, *args: object) -> None:
            want["on"] = len(self.starts) == self.capture_at
            self.starts.append(time.perf_counter())

    want = {"on": False}
    draws: tuple[torch.Tensor, ...] | None = None
    coefficients = mochi_loss._mochi_coefficients

    def capture(q: torch.Tensor, n: torch.Tensor, *args: object, **kwargs: object) -> object:
        nonlocal draws
        coef = coefficients(q, n, *args, **kwargs)  # type: ignore[arg-type]
        if want["on"] and draws is None:
            s = coef.num_mix
            draws = (n.detach().clone(), coef.positions[:, :s].clone(),
                     coef.positions[:, s : 2 * s].clone())
        return coef

    # the runs' "GPU available" / "max_epochs reached" lines would bury the results
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    t_moco: list[float] = []
    t_mochi: list[float] = []
    ratios: list[float] = []
    mochi_loss._mochi_coefficients = capture  # type: ignore[assignment]
    try:
        for _ in range(rounds):
            med = []
            for method in ("moco", "mochi"):
                cfg = load_recipe(f"{method}_mnist1d", _method_overrides(method, queue, mix) + [
                    f"trainer.max_epochs={epochs}", "eval.knn_every_n_epochs=0",
                    "trainer.enable_progress_bar=false"])
                # the queue is full after queue / batch steps
                full = -(-queue // cfg.data.batch_size) + 1
                clock = Clock(full + 5 if method == "mochi" else None)
                with tempfile.TemporaryDirectory() as tmp:
                    pretrain(cfg, tmp, extra_callbacks=[clock])
                times = [b - a for a, b in zip(clock.starts[full:], clock.starts[full + 1:],
                                               strict=False)]
                if not times:
                    raise SystemExit(f"--recipe-epochs {epochs} is too few to fill the queue")
                (t_moco if method == "moco" else t_mochi).extend(times)
                med.append(statistics.median(times))
            ratios.append(med[1] / med[0])
    finally:
        mochi_loss._mochi_coefficients = coefficients
    return t_moco, t_mochi, ratios, draws


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--queue", type=int, default=16384)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--num-hard", type=int, default=1024)
    p.add_argument("--num-mix", type=int, default=1024)
    p.add_argument("--num-query-mix", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--rounds", type=int, default=6,
                   help="training step: alternating MoCo/MoCHi blocks")
    p.add_argument("--block", type=int, default=10, help="training steps per block")
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    p.add_argument("--no-materialised", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-train-step", action="store_true",
                   help="skip the MNIST-1D training-step comparison")
    p.add_argument("--recipe-runs", type=int, default=0, metavar="R",
                   help="also time R alternating real runs (Lightning) of each MNIST-1D recipe")
    p.add_argument("--recipe-epochs", type=int, default=12, help="epochs per recipe run")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's malloc defaults (this script keeps freed memory, as "
                   "`contrastmix pretrain --keep-freed-memory` does)")
    a = p.parse_args()
    if a.quick:
        a.batch, a.queue, a.num_hard, a.num_mix, a.num_query_mix, a.repeats = (
            32, 2048, 128, 128, 16, 3)
        a.rounds, a.block = 1, 2
    if a.threads:
        torch.set_num_threads(a.threads)
    malloc_tuned = False
    if not a.default_malloc:
        from contrastmix.train.allocator import keep_freed_memory

        malloc_tuned = keep_freed_memory()
    st = make_setup(a.batch, a.queue, a.dim, a.num_hard, a.num_mix, a.num_query_mix, a.device)
    # interleave baseline and MoCHi in rounds so that machine load hits both alike
    moco: list[float] = []
    mochi: list[float] = []
    mat: list[float] = []
    for _ in range(3):
        moco += time_moco_loss(st, a.device, a.repeats)
        mochi += time_mochi_loss(st, a.device, a.repeats)
        if not a.no_materialised:
            mat += time_mochi_materialised_loss(st, a.device, max(1, a.repeats // 3))
    parts = time_mochi_parts(st, a.device, a.repeats)
    step_moco: list[float] = []
    step_mochi: list[float] = []
    ratios: list[float] = []
    if not a.no_train_step:
        step_moco, step_mochi, ratios = time_training_steps(
            a.queue, a.device, a.rounds, a.block, batch=a.batch,
            mix=(a.num_hard, a.num_mix, a.num_query_mix))
    run_moco: list[float] = []
    run_mochi: list[float] = []
    run_ratios: list[float] = []
    run_draws = None
    if a.recipe_runs:
        run_moco, run_mochi, run_ratios, run_draws = time_recipe_runs(
            a.queue, a.recipe_runs, a.recipe_epochs,
            mix=(a.num_hard, a.num_mix, a.num_query_mix))
    floor = parts.pop("pair_dots_floor", None)
    run_floor = (time_pair_dots_floor(*run_draws, a.repeats) if run_draws is not None
                 else None)
    med = statistics.median
    res = {
        "device": a.device,
        "threads": torch.get_num_threads(),
        "malloc_tuned": malloc_tuned,
        "B": a.batch, "K": a.queue, "d": a.dim,
        "N": a.num_hard, "s": a.num_mix, "s_prime": a.num_query_mix,
        "moco_ms": 1e3 * med(moco),
        "mochi_fast_ms": 1e3 * med(mochi),
        "ratio_fast": med(mochi) / med(moco),
        "moco_min_ms": 1e3 * min(moco),
        "mochi_fast_min_ms": 1e3 * min(mochi),
        "ratio_fast_min": min(mochi) / min(moco),
        "parts_ms": {k: 1e3 * v for k, v in parts.items()},
        "goal_ratio": 2.0,
    }
    if step_moco:
        res["train_step_moco_ms"] = 1e3 * med(step_moco)
        res["train_step_mochi_ms"] = 1e3 * med(step_mochi)
        res["train_step_ratio"] = med(step_mochi) / med(step_moco)
        res["train_step_round_ratios"] = ratios
        res["train_step_ratio_of_rounds"] = med(ratios)
        res["train_step_goal_ratio"] = 1.10
    if run_moco:
        res["recipe_run_step_moco_ms"] = 1e3 * med(run_moco)
        res["recipe_run_step_mochi_ms"] = 1e3 * med(run_mochi)
        res["recipe_run_step_ratio"] = med(run_mochi) / med(run_moco)
        res["recipe_run_round_ratios"] = run_ratios
    if floor is not None:
        res["pair_dots_floor_ms"] = 1e3 * floor
    if run_floor is not None:
        res["recipe_run_pair_dots_floor_ms"] = 1e3 * run_floor
    if mat:
        res["mochi_materialised_ms"] = 1e3 * med(mat)
        res["ratio_materialised"] = med(mat) / med(moco)
    if a.json:
        print(dumps(res))
        return
    print(f"device={a.device} threads={res['threads']} malloc_tuned={malloc_tuned} "
          f"B={a.batch} K={a.queue} d={a.dim} "
          f"MoCHi(N={a.num_hard}, s={a.num_mix}, s'={a.num_query_mix})")
    print(f"MoCo InfoNCE fwd+bwd     : {res['moco_ms']:8.2f} ms (median), "
          f"{res['moco_min_ms']:.2f} ms (min)")
    print(f"MoCHi fast path fwd+bwd  : {res['mochi_fast_ms']:8.2f} ms (median), "
          f"{res['mochi_fast_min_ms']:.2f} ms (min)")
    print(f"ratio fast / MoCo        : {res['ratio_fast']:8.2f}x median, "
          f"{res['ratio_fast_min']:.2f}x min  (goal at B=256, K=16384: <= 2.0x)")
    if mat:
        print(f"MoCHi materialised       : {res['mochi_materialised_ms']:8.2f} ms, "
              f"ratio {res['ratio_materialised']:.2f}x (context)")
    if step_moco:
        print(f"MNIST-1D training step   : MoCo {res['train_step_moco_ms']:.2f} ms, MoCHi "
              f"{res['train_step_mochi_ms']:.2f} ms, ratio {res['train_step_ratio']:.2f}x "
              "(median; goal at queue 16384: <= 1.10x)")
        print(f"  per-round ratios       : median {res['train_step_ratio_of_rounds']:.2f}x, "
              f"range {min(ratios):.2f}-{max(ratios):.2f}x over {len(ratios)} rounds of "
              f"{a.block} steps")
    if run_moco:
        print(f"MNIST-1D recipe runs     : MoCo {res['recipe_run_step_moco_ms']:.2f} ms, MoCHi "
              f"{res['recipe_run_step_mochi_ms']:.2f} ms per step, ratio "
              f"{res['recipe_run_step_ratio']:.2f}x (median over {len(run_moco)} and "
              f"{len(run_mochi)} steps of {a.recipe_runs} runs each; per run "
              + ", ".join(f"{r:.2f}x" for r in run_ratios) + ")")
    print("fast-path parts (median) : " + ", ".join(
        f"{k} {v:.2f} ms" for k, v in res["parts_ms"].items()))
    # the floor: the queue rows an exact fast path must read, against the step's 10 % budget
    for key, base, where in (
        ("pair_dots_floor_ms", "train_step_moco_ms", "the benchmark's draws"),
        ("recipe_run_pair_dots_floor_ms", "recipe_run_step_moco_ms", "a real run's draws"),
    ):
        if key in res:
            share = (f" = {100 * res[key] / res[base]:.1f} % of MoCo's step "
                     f"(the goal leaves 10 %)" if base in res else "")
            print(f"floor, bare type-1 dots  : {res[key]:.2f} ms on {where}{share}")


if __name__ == "__main__":
    main()
