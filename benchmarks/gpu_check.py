"""GPU check: the GPU paths timed against their baselines, ready for the day a GPU is at hand.

Three measurements, each a ratio taken in the same run (timings interleaved in rounds so that
machine load hits both sides alike):

1. **MoCHi vs MoCo training step**: one optimiser step (two views, encoder, momentum encoder,
   loss, backward, SGD, enqueue) of the CIFAR-10 recipes' model (CIFAR-stem ResNet-18,
   projector 2048 -> 128, queue 16384, MoCHi (N, s, s') = (1024, 1024, 128) mixing from the
   first step) on random 32x32 images, batch 256, under bf16 autocast (``trainer.precision:
   bf16-mixed``). Reports ``mochi_step / moco_step`` (docs/methods.md: MoCHi's extra cost).
2. **Bank search on the GPU**: :class:`contrastmix.banks.MemoryBank` with the buffers on the
   GPU, 262144 x 128 rows, one step's add (256 rows) + search (256 queries, k = 64):
   ``faiss-flat`` (faiss-gpu's brute force, when faiss has GPU support) and ``faiss-ivf`` vs the
   exact ``torch`` backend on the same GPU. Reports ``torch / faiss`` per backend and the IVF
   recall@64.
3. **Linear probe on the GPU**: :func:`contrastmix.eval.probe.fit_logistic` on 50,000 x 512
   features, 10 classes, on the GPU vs on the CPU. Reports ``cpu / gpu``.

Without a CUDA GPU the script prints one line saying so and exits with status 0.

Usage:
    python benchmarks/gpu_check.py            # on a machine with a GPU
    python benchmarks/gpu_check.py --quick    # small sizes
    python benchmarks/gpu_check.py --json     # one JSON object
    python benchmarks/gpu_check.py --device cpu --quick   # the same code on the CPU (fp32)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from contrastmix._json import dumps
from contrastmix._timing import synchronize, time_calls

NO_GPU = "gpu_check: no CUDA GPU found; nothing to time (run it on a machine with a GPU)"


def _autocast(device: str, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def make_train_step(
    method: str, device: str, *, batch: int, queue: int, image_size: int = 32,
    mix: tuple[int, int, int] = (1024, 1024, 128), bf16: bool = True,
    overrides: Sequence[str] = (),
) -> Callable[[], float]:
    """One optimiser step of the ``<method>_cifar10`` recipe's model on random images.

    Args:
        method: ``"moco"`` or ``"mochi"`` (mixing from the first step).
        device: Where the model runs.
        batch: Images per step.
        queue: Queue size (filled with random unit keys before timing).
        image_size: Height and width of the random images.
        mix: MoCHi's (N, s, s').
        bf16: Forward passes under bf16 autocast (``bf16-mixed``), as Lightning runs them.
        overrides: More recipe overrides (the smoke test shrinks the model).

    Returns:
        A function running one step and returning its loss.
    """
    from omegaconf import OmegaConf
    from torch.utils.data import TensorDataset

    from contrastmix.data.bundle import DataBundle
    from contrastmix.methods import get_method
    from contrastmix.recipe import load_recipe

    n, s, s2 = mix
    extra = ([f"method.num_hard={n}", f"method.num_mix={s}", f"method.num_query_mix={s2}",
              "method.warmup_epochs=0"] if method == "mochi" else [])
    cfg = load_recipe(f"{method}_cifar10", [f"method.queue_size={queue}",
                                            f"data.batch_size={batch}", *extra, *overrides])
    empty = TensorDataset(torch.zeros(0, 3, image_size, image_size), torch.zeros(0))
    data = DataBundle(empty, empty, empty, None, 3, 10)
    plain = OmegaConf.to_container(cfg, resolve=True)
    module = get_method(cfg.method.name)(plain, data).to(device)  # type: ignore[arg-type]
    module.train()
    g = torch.Generator().manual_seed(0)
    keys = F.normalize(torch.randn(queue, module.queue.dim, generator=g), dim=1).to(device)
    module.queue.add(keys, indices=torch.arange(10_000_000, 10_000_000 + queue, device=device))
    params = list(module.backbone.parameters()) + list(module.projector.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    views = [torch.randn(batch, 3, image_size, image_size, generator=g).to(device)
             for _ in range(2)]
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    idx = torch.arange(batch, device=device)

    def step() -> float:
        with _autocast(device, bf16):
            loss, _ = module.contrastive_step(views, y, idx, step=0, total_steps=1, epoch=0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def time_train_steps(device: str, *, batch: int, queue: int, rounds: int, repeats: int,
                     image_size: int = 32, bf16: bool = True,
                     mix: tuple[int, int, int] = (1024, 1024, 128),
                     overrides: Sequence[str] = ()) -> dict[str, Any]:
    """MoCo and MoCHi steps (:func:`make_train_step`), alternating blocks of ``repeats``."""
    t: dict[str, list[float]] = {"moco": [], "mochi": []}
    losses: dict[str, float] = {}
    for _ in range(rounds):
        for method in ("moco", "mochi"):
            step = make_train_step(method, device, batch=batch, queue=queue,
                                   image_size=image_size, mix=mix, bf16=bf16,
                                   overrides=overrides)
            t[method] += time_calls(step, device, repeats)
            losses[method] = step()
            del step
    moco, mochi = statistics.median(t["moco"]), statistics.median(t["mochi"])
    return {"moco_step_s": moco, "mochi_step_s": mochi, "mochi_over_moco": mochi / moco,
            "losses": losses, "batch": batch, "queue": queue, "image_size": image_size,
            "mix": list(mix),
            "precision": "bf16-mixed" if bf16 else "32-true"}


def time_bank_search(device: str, *, size: int, dim: int, batch: int, k: int, repeats: int,
                     backends: Sequence[str] = ("faiss-flat", "faiss-ivf")) -> dict[str, Any]:
    """A step's add + search on a full bank whose buffers are on ``device``, per backend,
    against the exact ``torch`` backend on the same device (and recall@k against it)."""
    from contrastmix.banks.memory_bank import MemoryBank

    g = torch.Generator().manual_seed(0)
    # clustered unit vectors, as embeddings are (benchmarks/speed/bank_search.py's data)
    centres = F.normalize(torch.randn(1000, dim, generator=g), dim=1)

    def clustered(n: int) -> torch.Tensor:
        which = torch.randint(0, centres.shape[0], (n,), generator=g)
        noise = torch.randn(n, dim, generator=g) * (1.5 / dim**0.5)
        return F.normalize(centres[which] + noise, dim=1).to(device)

    base = clustered(size)
    adds = [clustered(batch) for _ in range(repeats + 2)]
    queries = [clustered(batch) for _ in range(repeats + 2)]
    out: dict[str, Any] = {"size": size, "dim": dim, "batch": batch, "k": k}

    def run(backend: str) -> tuple[list[float], list[torch.Tensor]]:
        bank = MemoryBank(size, dim, backend=backend, store_labels=False, store_indices=False,
                          gather_distributed=False).to(device)
        bank.add(base)
        if backend != "torch":
            bank.rebuild_index()
        found: list[torch.Tensor] = []
        it = iter(range(len(adds)))

        def step() -> None:
            i = next(it)
            bank.add(adds[i])
            _, pos = bank.search(queries[i], k=k)
            found.append(pos)

        return time_calls(step, device, repeats), found

    exact_t, exact_pos = run("torch")
    out["torch_s"] = statistics.median(exact_t)
    for backend in backends:
        try:
            times, pos = run(backend)
        except Exception as e:  # e.g. faiss without GPU support: say so, time the others
            out[backend] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
            continue
        recall = statistics.mean(
            len(set(a.tolist()) & set(b.tolist())) / k
            for pa, pb in zip(pos, exact_pos, strict=True) for a, b in zip(pa, pb, strict=True))
        out[backend] = {"s": statistics.median(times),
                        "speedup": out["torch_s"] / statistics.median(times),
                        "recall_at_k": recall}
    try:
        import faiss

        out["faiss_gpus"] = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        out["faiss_gpus"] = 0
    return out


def time_probe(device: str, *, n: int, dim: int, classes: int, rounds: int,
               max_iter: int = 100) -> dict[str, Any]:
    """:func:`contrastmix.eval.probe.fit_logistic` on ``device`` vs on the CPU (same data,
    same penalty ``1 / n``, same iterations)."""
    from contrastmix.eval.probe import fit_logistic

    g = torch.Generator().manual_seed(0)
    means = torch.randn(classes, dim, generator=g) * 0.12
    y = torch.randint(0, classes, (n,), generator=g)
    x = means[y] + torch.randn(n, dim, generator=g)
    x = (x - x.mean(0)) / x.std(0)
    xd, yd = x.to(device), y.to(device)
    for xx, yy in ((xd, yd), (x, y)):  # warm-up (allocator, kernels) at full size
        fit_logistic(xx, yy, 1.0 / n, 3, num_classes=classes)
    t_dev: list[float] = []
    t_cpu: list[float] = []
    iters: dict[str, int] = {}
    sides = [("device", (xd, yd), t_dev), ("cpu", (x, y), t_cpu)]
    for r in range(rounds):
        for where, (xx, yy), times in (sides if r % 2 == 0 else sides[::-1]):
            synchronize(device)
            t0 = time.perf_counter()
            fit = fit_logistic(xx, yy, 1.0 / n, max_iter, num_classes=classes)
            synchronize(device)
            times.append(time.perf_counter() - t0)
            iters[where] = int(fit.n_iter)
    dev, cpu = statistics.median(t_dev), statistics.median(t_cpu)
    return {"n": n, "dim": dim, "classes": classes, "device_s": dev, "cpu_s": cpu,
            "cpu_over_device": cpu / dev, "iterations": iters}


def run_checks(device: str, quick: bool, parts: Sequence[str] = ("train", "bank", "probe"),
               bf16: bool = True) -> dict[str, Any]:
    """Every requested part at the full (or ``quick``) sizes; one dict of results."""
    res: dict[str, Any] = {"device": device, "torch": torch.__version__}
    if device.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name(torch.device(device))
    if "train" in parts:
        res["train_step"] = time_train_steps(
            device, batch=64 if quick else 256, queue=4096 if quick else 16384,
            rounds=1 if quick else 3, repeats=3 if quick else 10, bf16=bf16)
    if "bank" in parts:
        res["bank_search"] = time_bank_search(
            device, size=32768 if quick else 262144, dim=128, batch=256, k=64,
            repeats=3 if quick else 20)
    if "probe" in parts:
        res["probe"] = time_probe(device, n=5000 if quick else 50_000, dim=64 if quick else 512,
                                  classes=10, rounds=1 if quick else 3)
    return res


def _print(res: dict[str, Any]) -> None:
    print(f"device {res['device']} ({res.get('gpu', 'cpu')}), torch {res['torch']}")
    if "train_step" in res:
        r = res["train_step"]
        print(f"train step, ResNet-18 {r['image_size']}x{r['image_size']} batch {r['batch']} "
              f"queue {r['queue']} {r['precision']}: MoCo {1e3 * r['moco_step_s']:.1f} ms, "
              f"MoCHi {1e3 * r['mochi_step_s']:.1f} ms, ratio MoCHi/MoCo "
              f"{r['mochi_over_moco']:.2f}x")
    if "bank_search" in res:
        r = res["bank_search"]
        print(f"bank add+search {r['size']}x{r['dim']}, {r['batch']} queries, k={r['k']} "
              f"(faiss GPUs: {r['faiss_gpus']}): torch exact {1e3 * r['torch_s']:.2f} ms")
        for backend in ("faiss-flat", "faiss-ivf"):
            b = r.get(backend)
            if b is None:
                continue
            if "error" in b:
                print(f"  {backend}: {b['error']}")
            else:
                print(f"  {backend}: {1e3 * b['s']:.2f} ms, speed-up over torch "
                      f"{b['speedup']:.2f}x, recall@{r['k']} {b['recall_at_k']:.3f}")
    if "probe" in res:
        r = res["probe"]
        print(f"linear probe fit {r['n']}x{r['dim']}, {r['classes']} classes: device "
              f"{r['device_s']:.2f} s, CPU {r['cpu_s']:.2f} s, ratio CPU/device "
              f"{r['cpu_over_device']:.2f}x")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu")
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--parts", default="train,bank,probe",
                   help="comma-separated subset of train, bank, probe")
    p.add_argument("--fp32", action="store_true", help="train steps in fp32 (default bf16)")
    a = p.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print(NO_GPU)
        return 0
    parts = [x.strip() for x in a.parts.split(",") if x.strip()]
    unknown = sorted(set(parts) - {"train", "bank", "probe"})
    if unknown:
        p.error(f"unknown --parts {unknown}; choose from train, bank, probe")
    bf16 = not a.fp32 and (a.device.startswith("cuda") and torch.cuda.is_bf16_supported())
    res = run_checks(a.device, a.quick, parts, bf16=bf16)
    if a.json:
        print(dumps(res))
    else:
        _print(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
