"""The ``contrastmix`` command line: ``pretrain``, ``probe``, ``report``.

Errors caused by the user's input (unknown recipe key, missing file or run, checkpoint of
another method, bad values) print one line ``contrastmix: error: ...`` and exit with status 2.
A ``pretrain`` stopped by Ctrl-C / SIGTERM prints one line with the command that resumes it and
exits with 130 / 143.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

__all__ = ["main"]


_EVAL_SET_HELP = ("evaluate with other data.* / eval.* settings than the run's config.yaml, "
                  "e.g. data.root=LABELLED_DIR for a run pretrained on unlabelled images")


def _eval_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` items of ``probe`` / ``report``; a greedy ``--set`` gives back the RUN."""
    from contrastmix.errors import ContrastmixError

    overrides = _set_items(args, "run")
    if args.run is None:
        raise ContrastmixError(f"{args.command} needs a RUN directory")
    return overrides


def _set_items(args: argparse.Namespace, positional: str) -> list[str]:
    """The ``--set`` items; a greedy ``--set a=1 RECIPE`` took the positional argument (the
    one item without ``=``): give it back to ``args.<positional>``."""
    overrides = [o for group in args.overrides for o in group]
    stray = [o for o in overrides if "=" not in o]
    if getattr(args, positional) is None and len(stray) == 1:
        setattr(args, positional, stray[0])
        overrides.remove(stray[0])
    return overrides


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="contrastmix",
        description="Contrastive representation learning with mixup: pretrain, probe, report.",
    )
    from contrastmix import __version__

    p.add_argument("--version", action="version", version=f"contrastmix {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    pt = sub.add_parser("pretrain", help="train a recipe and write a run directory")
    pt.add_argument("recipe", nargs="?", default=None,
                    help="recipe YAML path or bundled recipe name (e.g. moco_mnist1d)")
    pt.add_argument("--set", dest="overrides", action="append", default=[], nargs="+",
                    metavar="KEY=VALUE", help="override recipe keys, e.g. trainer.max_epochs=5")
    pt.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                    help="import a Python module (dotted name, or a .py file) before the recipe "
                    "is read, e.g. to register a method, dataset or backbone of your own; "
                    "repeatable")
    pt.add_argument("--keep-freed-memory", action="store_true",
                    help="glibc only: keep freed heap memory in the process between steps "
                    "(fewer page faults with large queues; changes the whole process)")
    pt.add_argument("--out", default=None,
                    help="run directory (default runs/<recipe name>); a new run needs a new or "
                    "empty one, and one run at a time writes it")
    pt.add_argument("--resume", action="store_true",
                    help="continue the run in --out from checkpoints/last.ckpt (after Ctrl-C "
                    "or SIGTERM, which save it and exit 130 / 143, or to train more epochs)")
    pt.add_argument("--print-config", action="store_true",
                    help="print the resolved recipe (overrides applied, validated) and exit")

    pr = sub.add_parser("probe", help="linear probe (and kNN / geometry) of a finished run")
    pr.add_argument("run", nargs="?", default=None, help="run directory")
    pr.add_argument("--set", dest="overrides", action="append", default=[], nargs="+",
                    metavar="KEY=VALUE", help=_EVAL_SET_HELP)
    pr.add_argument("--json", action="store_true", help="print one JSON object")
    pr.add_argument("--knn", action="store_true", help="also report weighted kNN accuracy")
    pr.add_argument("--geometry", action="store_true",
                    help="also report uniformity, effective rank and neural collapse")
    pr.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    pr.add_argument("--features", default="backbone",
                    choices=["backbone", "projector", "projector-normalised"],
                    help="where the probed features come from: the backbone (default), the "
                    "run's projection head, or its L2-normalised output (the space the "
                    "contrastive loss acts on); recorded in the result")
    _progress_flag(pr)

    rp = sub.add_parser("report", help="write report.html with figures for a run")
    rp.add_argument("run", nargs="?", default=None, help="run directory")
    rp.add_argument("--set", dest="overrides", action="append", default=[], nargs="+",
                    metavar="KEY=VALUE", help=_EVAL_SET_HELP)
    rp.add_argument("--out", default=None, help="output directory (default RUN/report)")
    rp.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    _progress_flag(rp)

    ls = sub.add_parser("list", help="list the bundled recipes, methods, datasets and backbones")
    ls.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                    help="import a module first (its registered methods etc. are listed too)")
    return p


def _progress_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress-bar", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars for feature extraction (default: when stderr is a "
                   "terminal)")


def _import_user_modules(names: list[str]) -> None:
    """Import each ``--import`` module: a dotted module name, or the path of a ``.py`` file."""
    import importlib
    import importlib.util
    from pathlib import Path

    from contrastmix.errors import ContrastmixError

    for name in names:
        path = Path(name)
        try:
            if name.endswith(".py"):
                if not path.is_file():
                    raise ContrastmixError(f"--import {name}: no such file")
                # its own module name: a file called json.py must not replace the json module
                mod_name = path.stem if path.stem not in sys.modules else f"_user_{path.stem}"
                spec = importlib.util.spec_from_file_location(mod_name, path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                spec.loader.exec_module(module)
            else:
                if "" not in sys.path and str(Path.cwd()) not in sys.path:
                    sys.path.insert(0, str(Path.cwd()))  # as `python -m` would
                importlib.import_module(name)
        except ContrastmixError:
            raise
        except SystemExit as e:  # the module called sys.exit(): not ours to end the process
            raise ContrastmixError(
                f"--import {name} called sys.exit({e.code!r}) while being imported") from None
        except ModuleNotFoundError as e:
            raise ContrastmixError(f"--import {name}: {e}") from None
        except Exception as e:  # the user's module failed: say which and why, in one line
            first = (str(e).strip().splitlines() or [""])[0]
            raise ContrastmixError(
                f"--import {name} failed: {type(e).__name__}: {first}") from None


# ------------------------------------------------------------------ input validation layer
# Inputs that would otherwise fail deep inside training or evaluation (an OSError, an
# allocation failure) are named here, before any work, in one line.
def _check_out_dir(path: str | None, flag: str) -> None:
    """Refuse an output directory that is empty, a file, under a file, or not writable."""
    import os
    from pathlib import Path

    from contrastmix.errors import ContrastmixError

    if path is None:
        return
    if not path.strip():
        raise ContrastmixError(f"{flag} is empty: give a directory")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ContrastmixError(f"{flag} {path} is a file, not a directory")
    existing = p
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ContrastmixError(f"{flag} {path} cannot be created: {existing} is a file, "
                               "not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ContrastmixError(f"{flag} {path}: permission denied (cannot write in {existing})")


#: A queue may take at most this share of the machine's memory (checked before training).
QUEUE_MEMORY_SHARE = 0.5


def _physical_memory() -> int | None:
    """Bytes of RAM of this machine (``None`` where the OS does not say)."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _check_memory(cfg: object, total: int | None = None) -> None:
    """Refuse a ``method.queue_size`` whose ``[K, model.proj_output_dim]`` float32 queue (plus
    int64 sample ids) would take more than :data:`QUEUE_MEMORY_SHARE` of the RAM."""
    from omegaconf import OmegaConf

    from contrastmix.errors import ContrastmixError

    queue = OmegaConf.select(cfg, "method.queue_size", default=None)  # type: ignore[arg-type]
    dim = OmegaConf.select(cfg, "model.proj_output_dim", default=None)  # type: ignore[arg-type]
    if not isinstance(queue, int) or not isinstance(dim, int):
        return
    total = _physical_memory() if total is None else total
    need = queue * (4 * dim + 8)
    if total and need > QUEUE_MEMORY_SHARE * total:
        raise ContrastmixError(
            f"method.queue_size={queue} needs {need / 2**30:.3g} GiB for the queue ([{queue}, "
            f"{dim}] float32 and ids), more than {QUEUE_MEMORY_SHARE:.0%} of this machine's "
            f"{total / 2**30:.3g} GiB of memory; lower method.queue_size"
        )


def _environment_errors(handler: Callable[[argparse.Namespace], int],
                        args: argparse.Namespace) -> int:
    """Run ``handler``; failures of the machine rather than of the code (a file system
    refusing a write, memory running out) become one-line :class:`ContrastmixError`s."""
    from contrastmix.errors import ContrastmixError

    try:
        return handler(args)
    except ContrastmixError:
        raise
    except MemoryError:
        raise ContrastmixError("out of memory; lower data.batch_size, method.queue_size or the "
                               "model's size") from None
    except RuntimeError as e:  # torch's allocators (torch.OutOfMemoryError is one too)
        text = str(e)
        if not any(s in text for s in ("out of memory", "can't allocate memory",
                                       "Cannot allocate memory")):
            raise
        import re

        tried = re.search(r"[Tt]ried to allocate ([0-9.]+ ?[A-Za-z]*)", text)
        what = f" (tried to allocate {tried.group(1)})" if tried else ""
        raise ContrastmixError(f"out of memory{what}; lower data.batch_size, "
                               "method.queue_size or the model's size") from None
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        raise ContrastmixError(f"{e.strerror or type(e).__name__}{where}") from None


def _pretrain(args: argparse.Namespace) -> int:
    from contrastmix.recipe import load_recipe

    _import_user_modules(args.imports)
    overrides = _set_items(args, "recipe")
    if args.recipe is None:
        from contrastmix.errors import ContrastmixError

        raise ContrastmixError("pretrain needs a RECIPE (a YAML path or a bundled recipe name)")
    cfg = load_recipe(args.recipe, overrides)
    if args.print_config:  # a YAML that is itself a recipe (the run's config.yaml will match)
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    _check_out_dir(args.out, "--out")
    _check_memory(cfg)
    from contrastmix.train.pretrain import pretrain

    if args.keep_freed_memory:
        from contrastmix.train.allocator import keep_freed_memory

        keep_freed_memory()
    run = pretrain(cfg, args.out, resume=args.resume)
    print(f"run directory: {run}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from contrastmix._json import dumps
    from contrastmix.eval.evaluate import probe_run

    overrides = _eval_overrides(args)
    res = probe_run(args.run, knn=args.knn, geometry=args.geometry, device=args.device,
                    overrides=overrides, progress_bar=args.progress_bar, features=args.features)
    if args.json:
        print(dumps(res))  # strict JSON: a non-finite number is null (see contrastmix._json)
        return 0
    for line in _probe_lines(res):
        print(line)
    return 0


def _probe_lines(res: dict) -> list[str]:
    """The human-readable summary of a probe result (``--json`` prints everything)."""
    lines: list[str] = []
    task = res.get("task")
    if task == "regression":
        lines.append(f"linear probe (ridge, penalty {res['penalty']:.3g}) MAE: {res['mae']:.4f}  "
                     f"MSE: {res['mse']:.4f}  GM: {res['gmean']:.4f}  "
                     f"(n_train={res['n_train']}, n_test={res['n_test']})")
        for group, g in (res.get("groups") or {}).items():
            lines.append(f"  {group:>8s}-shot: MAE {g['mae']:.4f}  MSE {g['mse']:.4f}  "
                         f"GM {g['gmean']:.4f}  (n={g['n']})")
        if "l1_loss" in res:
            l1 = res["l1_loss"]
            lines.append(f"linear probe (L1 loss, penalty {l1['penalty']:.3g}) MAE: "
                         f"{l1['mae']:.4f}  MSE: {l1['mse']:.4f}  GM: {l1['gmean']:.4f}")
        if "spearman" in res:
            lines.append("ordering (Spearman, embedding vs label distances): "
                         f"{res['spearman']:.4f}")
    elif task == "multimodal":
        if "fusion_accuracy" in res:
            uni = "  ".join(f"{m} {a:.4f}" for m, a in res["unimodal_accuracy"].items())
            lines.append(f"fusion-head accuracy: {res['fusion_accuracy']:.4f}  "
                         f"(ECE {res['fusion_ece']:.4f}); unimodal heads: {uni}")
        retrieval = any(str(k).startswith("i2t_") for k in res)
        if retrieval:
            ks = (res.get("protocol") or {}).get("retrieval_k") or [1, 5]
            level = (res.get("protocol") or {}).get("retrieval_relevance", "class")

            def hits(d: str) -> str:
                return " ".join(  # *_recall@k: the former name, in older results
                    f"@{k} {res.get(f'{d}_hit_rate@{k}', res.get(f'{d}_recall@{k}')):.4f}"
                    for k in ks)

            lines.append(f"retrieval ({level}-level) hit rate image->text {hits('i2t')}; "
                         f"text->image {hits('t2i')}")
        if "zero_shot_accuracy" in res:
            lines.append(f"zero-shot accuracy: {res['zero_shot_accuracy']:.4f}  "
                         f"(ECE {res['zero_shot_ece']:.4f})")
        elif retrieval:
            lines.append("zero-shot accuracy and ECE: not measured (the data has no labels)")
        if "alignment" in res:
            lines.append(f"alignment {res['alignment']:.4f}  uniformity image "
                         f"{res['uniformity_image']:.4f} text {res['uniformity_text']:.4f} "
                         f"union {res['uniformity_union']:.4f}  modality gap "
                         f"{res['modality_gap']:.4f}")
        lines.append(f"(n_test={res['n_test']}; --json for every metric and the protocol)")
    else:
        extra = f", ECE {res['ece']:.4f}" if "ece" in res else ""
        lines.append(f"linear probe accuracy: {res['accuracy']:.4f}  (penalty {res['penalty']:.3g}"
                     f"{extra}, n_train={res['n_train']}, n_test={res['n_test']})")
    if res.get("features", "backbone") != "backbone":
        lines.append(f"features: {res['features']}")
    lines.extend(f"warning: {w}" for w in res.get("warnings") or [])
    if "knn_accuracy" in res:
        lines.append(f"kNN accuracy (k={res['knn']['k']}, tau={res['knn']['temperature']}): "
                     f"{res['knn_accuracy']:.4f}")
    return lines


def _report(args: argparse.Namespace) -> int:
    from contrastmix.eval.report import write_report

    _check_out_dir(args.out, "--out")
    overrides = _eval_overrides(args)
    path = write_report(args.run, args.out, device=args.device, overrides=overrides,
                        progress_bar=args.progress_bar)
    print(f"report: {path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from contrastmix.data.registry import datasets
    from contrastmix.methods import METHODS
    from contrastmix.models.build import backbones
    from contrastmix.recipe import bundled_recipes

    _import_user_modules(args.imports)
    for title, names in (("recipes", bundled_recipes()), ("methods", sorted(METHODS)),
                         ("datasets", datasets()), ("backbones", backbones())):
        print(f"{title}: {', '.join(names)}")
    return 0


def _one_line(e: BaseException) -> str:
    """The message of ``e``; for an error re-raised from a DataLoader worker (``Caught ...
    Original Traceback ...``), the worker's own message (its last line)."""
    msg = str(e)
    if "\nOriginal Traceback" in msg:
        return msg.strip().splitlines()[-1].partition(": ")[2] or msg
    return msg


def _resume_command(argv: Sequence[str], run_dir: str) -> str:
    """The command line that continues an interrupted ``pretrain``: the same arguments (recipe,
    ``--set``, ``--import``), with ``--out`` and ``--resume``."""
    import shlex

    args = list(argv)
    if not any(a == "--out" or a.startswith("--out=") for a in args):
        args += ["--out", run_dir]
    if "--resume" not in args:
        args.append("--resume")
    return "contrastmix " + shlex.join(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``contrastmix`` console script."""
    from contrastmix.errors import ContrastmixError, RunInterrupted

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    handler = {"pretrain": _pretrain, "probe": _probe, "report": _report,
               "list": _list}[args.command]
    try:
        return _environment_errors(handler, args)
    except ContrastmixError as e:
        print(f"contrastmix: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except RunInterrupted as e:  # 130 (SIGINT) / 143 (SIGTERM): `pretrain && probe` stops
        if e.step is not None and not e.finished:
            print(f"contrastmix: interrupted at step {e.step}; resume with: "
                  f"{_resume_command(argv, e.run_dir)}", file=sys.stderr)
        else:
            print(f"contrastmix: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("contrastmix: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
