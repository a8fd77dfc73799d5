"""The ``contrastmix`` command line: ``pretrain``, ``probe``, ``report``.

Errors caused by the user's input (unknown recipe key, missing file or run, checkpoint of
another method, bad values) print one line ``contrastmix: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["main"]


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
    pt.add_argument("--out", default=None, help="run directory (default runs/<recipe name>)")
    pt.add_argument("--resume", action="store_true",
                    help="continue the run in --out from checkpoints/last.ckpt")
    pt.add_argument("--print-config", action="store_true",
                    help="print the resolved recipe (overrides applied, validated) and exit")

    pr = sub.add_parser("probe", help="linear probe (and kNN / geometry) of a finished run")
    pr.add_argument("run", help="run directory")
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

    rp = sub.add_parser("report", help="write report.html with figures for a run")
    rp.add_argument("run", help="run directory")
    rp.add_argument("--out", default=None, help="output directory (default RUN/report)")
    rp.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")

    ls = sub.add_parser("list", help="list the bundled recipes, methods, datasets and backbones")
    ls.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                    help="import a module first (its registered methods etc. are listed too)")
    return p


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
        except ModuleNotFoundError as e:
            raise ContrastmixError(f"--import {name}: {e}") from None
        except Exception as e:  # the user's module failed: say which and why, in one line
            first = (str(e).strip().splitlines() or [""])[0]
            raise ContrastmixError(
                f"--import {name} failed: {type(e).__name__}: {first}") from None


def _pretrain(args: argparse.Namespace) -> int:
    from contrastmix.recipe import load_recipe

    _import_user_modules(args.imports)
    overrides = [o for group in args.overrides for o in group]
    # `--set a=1 RECIPE`: the greedy --set took the recipe; give it back
    stray = [o for o in overrides if "=" not in o]
    if args.recipe is None and len(stray) == 1:
        args.recipe = stray[0]
        overrides.remove(stray[0])
    if args.recipe is None:
        from contrastmix.errors import ContrastmixError

        raise ContrastmixError("pretrain needs a RECIPE (a YAML path or a bundled recipe name)")
    cfg = load_recipe(args.recipe, overrides)
    if args.print_config:  # a YAML that is itself a recipe (the run's config.yaml will match)
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    from contrastmix.train.pretrain import pretrain

    if args.keep_freed_memory:
        from contrastmix.train.allocator import keep_freed_memory

        keep_freed_memory()
    run = pretrain(cfg, args.out, resume=args.resume)
    print(f"run directory: {run}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from contrastmix.eval.evaluate import probe_run

    res = probe_run(args.run, knn=args.knn, geometry=args.geometry, device=args.device,
                    features=args.features)
    if args.json:
        print(json.dumps(res))
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
        if "zero_shot_accuracy" in res:
            lines.append(f"retrieval (class-level) image->text R@1 {res['i2t_recall@1']:.4f} "
                         f"R@5 {res['i2t_recall@5']:.4f}; text->image R@1 "
                         f"{res['t2i_recall@1']:.4f} R@5 {res['t2i_recall@5']:.4f}")
            lines.append(f"zero-shot accuracy: {res['zero_shot_accuracy']:.4f}  "
                         f"(ECE {res['zero_shot_ece']:.4f})")
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

    path = write_report(args.run, args.out, device=args.device)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``contrastmix`` console script."""
    from contrastmix.errors import ContrastmixError

    args = _parser().parse_args(argv)
    handler = {"pretrain": _pretrain, "probe": _probe, "report": _report,
               "list": _list}[args.command]
    try:
        return handler(args)
    except ContrastmixError as e:
        print(f"contrastmix: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("contrastmix: interrupted (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
