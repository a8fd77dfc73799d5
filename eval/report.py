"""``contrastmix report RUN_DIR``: a self-contained HTML report of a finished run.

:func:`write_report` writes ``report.html`` (every figure embedded as a base64
``data:image/png`` URI, so the file can be mailed or archived on its own) and the same figures
as PNG files next to it. Sections:

1. **Run** — method, dataset, epochs, wall time (``run.json``) and the resolved recipe.
2. **Training curves** — from ``metrics.csv``: loss, weighted-kNN accuracy, the proxy-task
   accuracy (share of queries whose key beats every real negative; Kalantidis et al.,
   NeurIPS 2020, §3), the learning rate and any other logged metric. Vertical markers come from
   the run's ``artifacts.json`` (``curve_markers``, e.g. the epoch hard-negative mixing starts),
   and every metric it lists in ``expected_metrics`` that was not logged is named in a note.
3. **Metrics** — linear probe (:func:`contrastmix.eval.probe.linear_probe`,
   docs/methods.md §9), weighted kNN (:func:`contrastmix.eval.knn.knn_accuracy`), uniformity
   and alignment (Wang & Isola, ICML 2020), effective rank (RankMe; Garrido et al., ICML 2023),
   NC1/NC2 (Papyan, Han & Donoho, PNAS 2020) — all on backbone features of the test split
   extracted **once** (:func:`contrastmix.runs.extract_run_features`), except the contrastive
   rows below.
4. **UMAP** of at most ``max_points`` L2-normalised test backbone features
   (``umap.UMAP(n_components=2, random_state=0)``; McInnes et al., 2018), coloured by class,
   or by the target with a continuous colour map for regression. The exact 15-NN graph is
   computed with torch and passed as ``precomputed_knn`` (same graph umap's exact search gives
   for small sets; it skips compiling pynndescent, which took most of the first call's time).
5. **Similarities** — histograms of cosine similarities between embeddings (L2-normalised) of
   two augmented views of the same test samples, produced as in training from what the run
   lists in ``artifacts.json`` (:func:`contrastmix.rundir.read_artifacts`; the report never asks
   which method wrote it, never imports the training code and never reads
   ``checkpoints/last.ckpt``). Every file is read weights only
   (:func:`contrastmix.runs.load_state_file`) and loaded strictly:
   * query ``q``: online backbone (``backbone.pt``) + the listed ``projector`` (built from the
     recipe's ``model`` section by :func:`contrastmix.models.build_projector`) on view 1;
   * key ``k``: the listed ``key_encoder`` (a momentum encoder with the architecture of
     ``Sequential(backbone, projector)``) on view 2, or the online encoder when none is listed;
   * *positive*: ``q_i·k_i``; *negative*: ``q_i·n`` against every row ``n`` of the listed
     ``queue`` (``{"features": Tensor[K, d]}``), or ``q_i·k_j`` (``j != i``, same batch) when
     the run lists none;
   * *synthetic* (when ``synthetic_negatives`` lists ``{"num_hard": N, "num_mix": s,
     "num_query_mix": s'}`` and there is a queue): ``q_i·h`` for the ``(N, s, s')``
     hard-negative mixtures of the queue (:func:`contrastmix.mixing.mochi.mochi_negatives`;
     docs/methods.md §1), type 1 (two hard negatives) and type 2 (query mixed in) separately.
     When the run stopped before ``from_epoch`` (epochs trained, ``run.json``, at most
     ``from_epoch``), a note says mixing never started and the histograms show what it would
     have added.

   A run without ``artifacts.json`` (an older run) or whose ``artifacts.json`` lists no
   projector gets similarities of online backbone features with in-batch negatives. A listed
   file that cannot be read or does not match the recipe is named in a note, and the section
   falls back the same way. The encoders run in training mode (BatchNorm uses batch statistics,
   as in the training step) on copies, batches of ``data.batch_size``; the views come from the
   bundle's ``batch_augment`` with a seeded generator. PIL datasets (``batch_augment is None``)
   skip this section.
6. **Per-epoch geometry** — when the run directory holds per-epoch feature files (see below):
   uniformity, effective rank and NC1/NC2 against the epoch.
7. **Reliability diagram** of the linear probe's test predictions (classification).

Sections that do not apply (regression: kNN, NC, reliability; multimodal runs: every
embedding section) are replaced by a note; a section that fails unexpectedly is replaced by an
error note (and a ``[report]`` line on stdout) — the report is always written.

**Per-epoch feature files.** ``RUN_DIR/features/epoch_<E>.pt`` (``E`` = number of completed
epochs, any zero padding, e.g. ``epoch_0005.pt``), each written with
``torch.save({"features": Tensor[N, d] (float), "labels": Tensor[N]}, path)``; the same ``N``
samples at every epoch are recommended. They are read with ``torch.load(...,
weights_only=True)``; unreadable or malformed files are listed in a note and skipped.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import csv
import html
import json
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from contrastmix._atomic import write_bytes, write_text
from contrastmix._json import loads
from contrastmix._numerics import unit_rows
from contrastmix._validation import check_same_length, check_tensor
from contrastmix.data.registry import build_data
from contrastmix.errors import ContrastmixError, RunDirError
from contrastmix.eval.collapse import neural_collapse
from contrastmix.eval.geometry import alignment, effective_rank, uniformity
from contrastmix.eval.knn import knn_accuracy
from contrastmix.eval.ordering import distance_spearman
from contrastmix.eval.probe import linear_probe
from contrastmix.mixing.mochi import mochi_negatives
from contrastmix.models.build import build_projector
from contrastmix.rundir import ARTIFACTS_FILE, RunArtifacts, read_artifacts
from contrastmix.runs import (
    extract_run_features,
    load_backbone,
    load_run,
    load_state_file,
    resolve_device,
)

__all__ = [
    "write_report",
    "read_metrics_csv",
    "load_epoch_features",
    "batch_similarities",
    "SimilarityHistogram",
    "SIMILARITY_BINS",
]

#: Bins of the similarity histograms: 200 equal-width bins on ``[-1, 1]``.
SIMILARITY_BINS = 200

_IMG_DPI = 100
_NEG_CHUNK_ELEMENTS = 2**24  # query x queue similarities per chunk (64 MiB in fp32)
_SYNTH_CHUNK_ELEMENTS = 2**22  # synthetic vectors entries (B x (s+s') x d) per chunk


# --------------------------------------------------------------------------------------------
# Small public helpers
# --------------------------------------------------------------------------------------------


def read_metrics_csv(path: str | Path) -> list[dict[str, float]]:
    """Rows of a Lightning ``metrics.csv`` as ``{column: float}`` (empty cells left out).

    Cells that do not parse as a finite or infinite float are left out too.
    """
    rows: list[dict[str, float]] = []
    with Path(path).open(newline="") as fh:
        for raw in csv.DictReader(fh):
            row: dict[str, float] = {}
            for k, v in raw.items():
                if k is None or v is None or v == "":
                    continue
                try:
                    row[k] = float(v)
                except ValueError:
                    continue
            rows.append(row)
    return rows


def load_epoch_features(run_dir: str | Path) -> tuple[list[tuple[int, Tensor, Tensor]], list[str]]:
    """Read ``RUN_DIR/features/epoch_<E>.pt`` files (format in the module docstring).

    Returns:
        ``(entries, problems)``: ``entries`` sorted by epoch, each ``(epoch, features [N, d]
        float64, labels [N])``; ``problems`` names every file skipped and why.
    """
    folder = Path(run_dir) / "features"
    entries: list[tuple[int, Tensor, Tensor]] = []
    problems: list[str] = []
    if not folder.is_dir():
        return entries, problems
    for path in sorted(folder.glob("epoch_*.pt")):
        m = re.fullmatch(r"epoch_(\d+)\.pt", path.name)
        if m is None:
            problems.append(f"{path.name}: name is not epoch_<integer>.pt")
            continue
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt or foreign file
            problems.append(f"{path.name}: unreadable ({type(e).__name__})")
            continue
        if not isinstance(obj, dict) or not {"features", "labels"} <= set(obj):
            problems.append(f"{path.name}: not a dict with 'features' and 'labels'")
            continue
        feats, labels = obj["features"], obj["labels"]
        try:
            check_tensor("features", feats, ndim=2, floating=True)
            check_tensor("labels", labels, ndim=(1, 2))
            check_same_length(features=feats, labels=labels)
        except ValueError as e:
            problems.append(f"{path.name}: {e}")
            continue
        entries.append((int(m.group(1)), feats.double(), labels))
    entries.sort(key=lambda t: t[0])
    return entries, problems


def batch_similarities(
    q: Tensor,
    k: Tensor,
    queue: Tensor | None = None,
    *,
    mochi: tuple[int, int, int] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Cosine similarities a contrastive loss sees for one batch (all detached, fp32+).

    Args:
        q: ``[B, d]`` queries (L2-normalised here).
        k: ``[B, d]`` keys; row ``i`` is the positive of ``q_i`` (L2-normalised here).
        queue: Optional ``[K, d]`` negatives (L2-normalised here). Without it the negatives of
            ``q_i`` are the other keys of the batch ``k_j, j != i``.
        mochi: Optional MoCHi ``(N, s, s')``: also return the similarities to the synthetic
            hard negatives of :func:`contrastmix.mixing.mochi.mochi_negatives` (needs a
            non-empty ``queue``).
        generator: Optional ``torch.Generator`` for the MoCHi draws.

    Returns:
        ``positive [B]``, ``negative [B*K]`` (or ``[B*(B-1)]``), ``hardest_negative [B]``
        (the largest negative of each query; ``-inf`` when it has none) and, with ``mochi``,
        ``synthetic_type1 [B*s]`` and ``synthetic_type2 [B*s']``.
    """
    check_tensor("q", q, ndim=2, floating=True)
    check_tensor("k", k, ndim=2, dim=q.shape[1], floating=True)
    check_same_length(q=q, k=k)
    dt = torch.promote_types(q.dtype, torch.float32)
    with torch.no_grad(), torch.autocast(device_type=q.device.type, enabled=False):
        qn = unit_rows(q.detach().to(dt), dim=1)
        kn = unit_rows(k.detach().to(dt), dim=1)
        b = qn.shape[0]
        out: dict[str, Tensor] = {"positive": (qn * kn).sum(dim=1)}
        if queue is not None:
            check_tensor("queue", queue, ndim=2, dim=q.shape[1], floating=True)
            nn_ = unit_rows(queue.detach().to(device=qn.device, dtype=dt), dim=1)
            rows = max(1, _NEG_CHUNK_ELEMENTS // max(1, nn_.shape[0]))
            negs, hard = [], []
            for s in range(0, b, rows):
                sims = qn[s : s + rows] @ nn_.T  # [rows, K]
                negs.append(sims.reshape(-1))
                hard.append(
                    sims.amax(dim=1) if sims.shape[1] else torch.full(
                        (sims.shape[0],), -math.inf, dtype=dt, device=qn.device
                    )
                )
            out["negative"] = torch.cat(negs)
            out["hardest_negative"] = torch.cat(hard)
        else:
            sims = qn @ kn.T  # [B, B]
            off = ~torch.eye(b, dtype=torch.bool, device=qn.device)
            out["negative"] = sims[off]
            out["hardest_negative"] = sims.masked_fill(~off, -math.inf).amax(dim=1) if b else (
                sims.new_empty(0)
            )
        if mochi is not None:
            if queue is None or queue.shape[0] == 0:
                raise ValueError("`mochi` needs a non-empty `queue` to mix")
            n_hard, s_mix, s_qmix = mochi
            width = max(1, (s_mix + s_qmix) * qn.shape[1])
            rows = max(1, _SYNTH_CHUNK_ELEMENTS // width)
            t1, t2 = [], []
            for s in range(0, b, rows):
                qc = qn[s : s + rows]
                h = mochi_negatives(qc, nn_, n_hard, s_mix, s_qmix, generator=generator)
                sims = torch.einsum("bd,bnd->bn", qc, h.to(dt))  # [rows, s + s']
                t1.append(sims[:, :s_mix].reshape(-1))
                t2.append(sims[:, s_mix:].reshape(-1))
            out["synthetic_type1"] = torch.cat(t1)
            out["synthetic_type2"] = torch.cat(t2)
        return out


@dataclass
class SimilarityHistogram:
    """Streaming histogram of similarities on ``[-1, 1]`` (fixed bins) with running moments.

    Attributes:
        bins: Number of equal-width bins on ``[-1, 1]`` (values outside are clamped in).
        counts: ``[bins]`` float64 counts.
        total: Number of values added.
        sum: Their sum (for the mean).
    """

    bins: int = SIMILARITY_BINS
    counts: np.ndarray = field(default_factory=lambda: np.zeros(SIMILARITY_BINS))
    total: int = 0
    sum: float = 0.0

    def __post_init__(self) -> None:
        if self.counts.shape != (self.bins,):
            self.counts = np.zeros(self.bins)

    def add(self, values: Tensor) -> None:
        """Add a tensor of similarities (any shape; non-finite values are ignored)."""
        v = values.detach().reshape(-1).to(torch.float64)
        v = v[torch.isfinite(v)]
        if v.numel() == 0:
            return
        idx = ((v.clamp(-1.0, 1.0) + 1.0) * (self.bins / 2.0)).floor().long()
        idx = idx.clamp_(0, self.bins - 1).cpu()
        self.counts += torch.bincount(idx, minlength=self.bins).double().numpy()
        self.total += int(v.numel())
        self.sum += float(v.sum())

    @property
    def mean(self) -> float:
        """Mean of the values added (``nan`` when empty)."""
        return self.sum / self.total if self.total else math.nan

    @property
    def edges(self) -> np.ndarray:
        """``[bins + 1]`` bin edges."""
        return np.linspace(-1.0, 1.0, self.bins + 1)

    def density(self, merge: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Probability density on ``[-1, 1]`` with ``merge`` adjacent bins merged.

        Args:
            merge: A divisor of :attr:`bins` (coarser bins for small samples).

        Returns:
            ``(density [bins / merge], edges [bins / merge + 1])``.
        """
        if merge < 1 or self.bins % merge:
            raise ValueError(f"`merge` must divide bins={self.bins}, got {merge}")
        counts = self.counts.reshape(-1, merge).sum(axis=1)
        width = 2.0 * merge / self.bins
        return counts / (max(self.total, 1) * width), self.edges[::merge]

    def auto_merge(self) -> int:
        """Bin merge factor giving about ``2 sqrt(total)`` bins (at least 25)."""
        target = min(self.bins, max(25.0, 2.0 * math.sqrt(max(self.total, 1))))
        divisors = [d for d in range(1, self.bins + 1) if self.bins % d == 0]
        return min(divisors, key=lambda d: abs(self.bins / d - target))


# --------------------------------------------------------------------------------------------
# Page model
# --------------------------------------------------------------------------------------------


@dataclass
class _Figure:
    name: str  # PNG file name
    caption: str
    png: bytes


@dataclass
class _Section:
    key: str
    title: str
    intro: str = ""
    figures: list[_Figure] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # HTML
    notes: list[str] = field(default_factory=list)  # plain text
    errors: list[str] = field(default_factory=list)  # unexpected failures (plain text)


@dataclass
class _Context:
    run_dir: Path
    out_dir: Path
    cfg: Any
    max_points: int
    seed: int
    device: torch.device
    log: Callable[[str], None]
    task: str = "classification"
    data: Any = None
    feats: dict[str, Any] | None = None
    metrics: list[tuple[str, str, str]] = field(default_factory=list)  # (name, value, note)
    artifacts: RunArtifacts = field(default_factory=RunArtifacts)  # artifacts.json (or empty)
    artifacts_problem: str = ""  # why artifacts.json could not be used ("" when it could)
    overrides: list[str] = field(default_factory=list)  # --set items of this evaluation


@contextlib.contextmanager
def _step(ctx: _Context, message: str) -> Iterator[None]:
    """Log ``message ...`` before a long step and its duration after it."""
    ctx.log(f"{message} ...")
    t = time.time()
    yield
    ctx.log(f"  done in {time.time() - t:.1f} s")


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.4f}" if 1e-3 <= abs(v) < 1e4 or v == 0 else f"{v:.3e}"
    return str(v)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    head = ""
    if header is not None:
        cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        head = f"<thead><tr>{cells}</tr></thead>"
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _new_figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` on the Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_IMG_DPI)
    return buf.getvalue()


def _add_figure(ctx: _Context, sec: _Section, name: str, caption: str, fig: Any) -> None:
    data = _png(fig)
    write_bytes(ctx.out_dir / name, data)
    sec.figures.append(_Figure(name, caption, data))


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _section_run(ctx: _Context) -> _Section:
    from omegaconf import OmegaConf

    sec = _Section("run", "Run")
    cfg = ctx.cfg
    rows: list[tuple[str, Any]] = [
        ("run directory", str(ctx.run_dir)),
        ("recipe", cfg.name),
        ("method", cfg.method.name),
        ("dataset", cfg.data.name),
        ("task", ctx.task),
        ("backbone", f"{cfg.model.backbone} (width {cfg.model.width})"),
        ("seed", cfg.seed),
    ]
    if ctx.overrides:
        rows.append(("evaluated with --set", " ".join(ctx.overrides)))
    summary = ctx.run_dir / "run.json"
    if summary.is_file():
        try:
            s = loads(summary.read_text())
            rows += [("epochs", s.get("epochs")), ("optimiser steps", s.get("global_step")),
                     ("wall time (s)", s.get("wall_time_s")), ("resumed", s.get("resumed"))]
        except (OSError, ValueError):
            sec.notes.append("run.json is unreadable; epochs and wall time are not shown.")
    else:
        sec.notes.append("no run.json in the run directory.")
    art = ctx.artifacts
    listed = [n for n in (art.projector, art.key_encoder, art.queue) if n is not None]
    listed += [n for n in art.files if isinstance(n, str)]
    if ctx.artifacts_problem:
        sec.notes.append(f"{ctx.artifacts_problem}; the report uses backbone.pt only.")
    elif (ctx.run_dir / ARTIFACTS_FILE).is_file():
        rows.append((f"artefacts ({ARTIFACTS_FILE})", ", ".join(listed) or "none"))
    sec.tables.append(_table(rows))
    yaml_text = OmegaConf.to_yaml(cfg)
    sec.tables.append(
        "<details><summary>resolved recipe (config.yaml)</summary>"
        f"<pre>{html.escape(yaml_text)}</pre></details>"
    )
    return sec


def _steps_per_epoch(rows: list[dict[str, float]]) -> float | None:
    best = None
    for r in rows:
        if "epoch" in r and "step" in r and not any(k.endswith("_step") for k in r):
            spe = (r["step"] + 1) / (r["epoch"] + 1)
            best = spe if best is None else max(best, spe)
    return best


def _section_curves(ctx: _Context) -> _Section:
    sec = _Section(
        "curves", "Training curves",
        "From metrics.csv. x axis: epochs completed (per-step values at step / steps per "
        "epoch).",
    )
    path = ctx.run_dir / "metrics.csv"
    if not path.is_file():
        sec.notes.append("no metrics.csv in the run directory: no training curves.")
        return sec
    rows = read_metrics_csv(path)
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols and k not in ("epoch", "step")]
    if not cols:
        sec.notes.append("metrics.csv holds no metric values.")
        return sec
    spe_found = _steps_per_epoch(rows)
    spe = spe_found or 1.0
    if spe_found is None:
        sec.notes.append("no epoch-end rows in metrics.csv: the x axis is the optimiser step.")

    def series(col: str) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for r in rows:
            if col not in r:
                continue
            if col.endswith("_step") or "epoch" not in r:
                x = (r.get("step", 0.0) + (1.0 if col.endswith("_step") else 0.0)) / spe
            else:
                x = r["epoch"] + 1.0
            xs.append(x)
            ys.append(r[col])
        order = np.argsort(np.asarray(xs), kind="stable")
        return np.asarray(xs)[order], np.asarray(ys)[order]

    loss_cols = [c for c in cols if "loss" in c]
    panels: list[tuple[str, str, list[str]]] = []  # (key for curve markers, title, columns)
    if loss_cols:
        panels.append(("loss", "loss", loss_cols))
    if "knn_acc" in cols:
        panels.append(("knn_acc", "kNN accuracy (test)", ["knn_acc"]))
    if "proxy_acc" in cols:
        panels.append(("proxy_acc", "proxy-task accuracy", ["proxy_acc"]))
    lr_cols = [c for c in cols if c.startswith("lr-")]
    if lr_cols:
        panels.append(("lr", "learning rate", lr_cols))
    used = {c for _, _, cs in panels for c in cs}
    others = [
        c for c in cols if c not in used
        and not (c.endswith("_step") and c[: -len("_step")] + "_epoch" in cols)
    ]
    extra = others[:9]
    panels += [(c, c, [c]) for c in extra]
    if len(others) > len(extra):
        sec.notes.append(f"{len(others) - len(extra)} more logged metrics are not plotted: "
                         + ", ".join(others[len(extra):]))
    art = ctx.artifacts
    if "proxy_acc" in cols:
        sec.intro += (" The proxy-task accuracy is the share of training queries whose positive "
                      "key beats every real negative"
                      + (" (the synthetic negatives are not counted)."
                         if art.synthetic_negatives else "."))
    if "knn_acc" not in cols and ctx.task == "classification":
        sec.notes.append("no kNN accuracy was logged (eval.knn_every_n_epochs = 0?).")
    for name in _names(art.expected_metrics):
        if not any(c in cols for c in (name, f"{name}_epoch", f"{name}_step")):
            sec.notes.append(f"no {_METRIC_NAMES.get(name, name)} was logged ({name}, which "
                             "the run's artifacts.json lists as expected).")
    markers = _curve_markers(art.curve_markers, sec)

    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig = _new_figure(4.2 * ncol, 3.2 * nrow)
    for i, (key, title, cs) in enumerate(panels):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        for c in cs:
            x, y = series(c)
            if c.endswith("_step"):
                ax.plot(x, y, linewidth=0.8, alpha=0.6, label=c)
            else:
                ax.plot(x, y, marker="o", markersize=3, linewidth=1.4, label=c)
        for j, (epoch, label, names) in enumerate(markers):
            if names is None or key in names or any(c in names for c in cs):
                ax.axvline(epoch, color=_MARKER_COLORS[j % len(_MARKER_COLORS)],
                           linestyle=":", linewidth=1, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch" if spe_found is not None else "step")
        ax.grid(alpha=0.3)
        if len(ax.get_legend_handles_labels()[0]) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    _add_figure(ctx, sec, "training_curves.png",
                "Training curves: " + ", ".join(t for _, t, _ in panels) + ".", fig)
    return sec


#: Readable names of logged metrics, for the notes on missing ones.
_METRIC_NAMES = {"proxy_acc": "proxy-task accuracy", "knn_acc": "kNN accuracy",
                 "train_loss": "training loss"}
_MARKER_COLORS = ("tab:red", "tab:purple", "tab:brown", "tab:olive")


def _names(value: Any) -> list[str]:
    """The strings of a list read from ``artifacts.json`` (anything else: none)."""
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _curve_markers(entries: Any, sec: _Section
                   ) -> list[tuple[float, str, set[str] | None]]:
    """``(epoch, label, metric names or None for every panel)`` of the run's ``curve_markers``
    (``artifacts.json``); a malformed entry is named in a note and skipped."""
    out: list[tuple[float, str, set[str] | None]] = []
    for m in entries if isinstance(entries, list) else [entries]:
        try:
            epoch = float(m["epoch"])
            if not math.isfinite(epoch) or isinstance(m["epoch"], bool):
                raise ValueError
            label = str(m.get("label", f"epoch {_fmt(epoch)}"))
            names = m.get("metrics")
            if names is not None and (isinstance(names, str)
                                      or not all(isinstance(n, str) for n in names)):
                raise ValueError
        except (KeyError, TypeError, ValueError, AttributeError):
            sec.notes.append(f"artifacts.json: skipped a malformed curve marker {m!r} (want "
                             "{'epoch': number, 'label': text, 'metrics': [names]}).")
            continue
        out.append((epoch, label, None if names is None else set(names)))
    return out


def _probe_section(ctx: _Context, probe: dict[str, Any] | None, reliability: Path | None
                   ) -> _Section:
    sec = _Section(
        "reliability", "Reliability diagram",
        "Linear probe on the test split, before temperature scaling: accuracy per confidence "
        "bin against the diagonal (15 bins; ECE in the title).",
    )
    if ctx.task != "classification":
        sec.notes.append("calibration applies to classification runs only.")
    elif reliability is not None and reliability.is_file():
        sec.figures.append(_Figure(reliability.name, "Reliability diagram of the linear probe.",
                                   reliability.read_bytes()))
        if probe is not None:
            sec.tables.append(_table(
                [("ECE", probe.get("ece")),
                 ("ECE after temperature scaling", probe.get("ece_temperature_scaled")),
                 ("temperature (fitted on validation)", probe.get("temperature")),
                 ("test NLL", probe.get("nll"))]))
    else:
        sec.notes.append("the linear probe did not run, so there is no reliability diagram.")
    return sec


def _run_probe(ctx: _Context) -> tuple[dict[str, Any], Path | None]:
    f = ctx.feats
    assert f is not None
    data = f["data"]
    rel = ctx.out_dir / "reliability.png" if ctx.task == "classification" else None
    with _step(ctx, f"linear probe on {len(f['train_x'])} train / {len(f['test_x'])} test "
               f"features (max_iter {ctx.cfg.eval.probe_max_iter})"):
        res = linear_probe(
            f["train_x"], f["train_y"], f["test_x"], f["test_y"], task=ctx.task,
            val_fraction=ctx.cfg.eval.probe_val_fraction, max_iter=ctx.cfg.eval.probe_max_iter,
            seed=ctx.cfg.seed, groups=data.test_groups,
            group_names=list(data.group_names) if data.group_names else None,
            reliability_plot=rel,
        )
    return res, rel


def _metrics_rows(ctx: _Context, probe: dict[str, Any] | None) -> None:
    """Fill ``ctx.metrics`` with the probe, kNN and geometry rows of the test features."""

    f = ctx.feats
    assert f is not None
    m = ctx.metrics
    if probe is not None:
        if ctx.task == "classification":
            m.append(("linear probe accuracy", _fmt(probe["accuracy"]),
                      f"penalty {_fmt(probe['penalty'])} chosen on a validation split, refit"))
            if "top5" in probe:
                m.append(("linear probe top-5 accuracy", _fmt(probe["top5"]), ""))
            m.append(("linear probe ECE", _fmt(probe["ece"]), "15 bins, before T-scaling"))
        else:
            for key in ("mae", "mse", "gmean"):
                m.append((f"linear probe {key.upper() if key != 'gmean' else 'GM error'}",
                          _fmt(probe[key]), "ridge, penalty chosen on a validation split"))
            for g, res in (probe.get("groups") or {}).items():
                m.append((f"linear probe MAE ({g})", _fmt(res["mae"]), f"n = {res['n']}"))
    tr_x, tr_y, te_x, te_y = f["train_x"], f["train_y"], f["test_x"], f["test_y"]
    if ctx.task == "classification":
        k, t = ctx.cfg.eval.knn_k, ctx.cfg.eval.knn_temperature
        with _step(ctx, f"weighted kNN (k={k}, tau={t})"):
            acc = knn_accuracy(tr_x, tr_y, te_x, te_y, k=k, temperature=t)
        m.append(("kNN accuracy", _fmt(acc), f"k = {min(k, len(tr_x))}, tau = {t}"))
    else:
        rho = distance_spearman(te_x, te_y, max_samples=min(1000, ctx.max_points),
                                seed=ctx.seed)
        m.append(("distance Spearman rho", _fmt(rho),
                  "embedding vs label distances, test subsample"))
    ctx.log("geometry metrics (uniformity, effective rank"
            + (", neural collapse)" if ctx.task == "classification" else ")"))
    gen = torch.Generator().manual_seed(ctx.seed)
    m.append(("uniformity (backbone)", _fmt(float(uniformity(
        te_x, max_samples=ctx.max_points, generator=gen))),
        f"t = 2, L2-normalised test features (<= {ctx.max_points})"))
    m.append(("effective rank (backbone)", _fmt(float(effective_rank(te_x))),
              f"RankMe, of at most min(N, d) = {min(te_x.shape)}"))
    if ctx.task == "classification":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nc = neural_collapse(te_x, te_y)
        m.append(("NC1", _fmt(nc["nc1"]), "Tr(Sigma_W Sigma_B^+) / C, test features"))
        m.append(("NC2 equinorm", _fmt(nc["nc2_equinorm"]), "std / mean of class-mean norms"))
        m.append(("NC2 equiangular", _fmt(nc["nc2_equiangular"]),
                  "std of class-mean cosines"))
        m.append(("NC2 max-angle", _fmt(nc["nc2_max_angle"]), "mean |cos + 1/(C-1)|"))


def _exact_knn(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact ``k`` nearest neighbours (self included, as umap's own graph) by Euclidean distance.

    Returns:
        ``indices [N, k]`` int64 and ``distances [N, k]`` float32, nearest first.
    """
    rows = max(1, 2**22 // max(1, x.shape[0]))
    idx, dist = [], []
    for s in range(0, x.shape[0], rows):
        d = torch.cdist(x[s : s + rows], x)
        d[torch.arange(d.shape[0]), torch.arange(s, s + d.shape[0])] = 0.0  # self first
        v, i = d.topk(k, dim=1, largest=False, sorted=True)
        idx.append(i)
        dist.append(v)
    return torch.cat(idx), torch.cat(dist).float().contiguous()


def _section_umap(ctx: _Context) -> _Section:
    sec = _Section(
        "umap", "UMAP of test embeddings",
        "umap.UMAP(n_components=2, random_state=0) of L2-normalised backbone features of the "
        "test split (a seeded random subset when larger than the limit), on the exact "
        "15-nearest-neighbour graph (Euclidean on the unit sphere, i.e. cosine).",
    )
    f = ctx.feats
    assert f is not None
    x, y = f["test_x"], f["test_y"]
    n = x.shape[0]
    if n < 4:
        sec.notes.append(f"only {n} test samples: no UMAP.")
        return sec
    idx = torch.arange(n)
    if n > ctx.max_points:
        gen = torch.Generator().manual_seed(ctx.seed)
        idx = torch.randperm(n, generator=gen)[: ctx.max_points].sort().values
    xs = unit_rows(x[idx].double(), dim=1).numpy()
    ys = y[idx].cpu()
    with _step(ctx, f"umap of {len(idx)} test embeddings (the first call compiles numba code)"
               ), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import umap

        k = min(15, len(idx) - 1)
        knn_idx, knn_dist = _exact_knn(torch.from_numpy(xs), k)
        emb = umap.UMAP(
            n_components=2, random_state=0, n_neighbors=k,
            precomputed_knn=(knn_idx.numpy(), knn_dist.numpy()),
        ).fit_transform(xs)
    fig = _new_figure(6.4, 5.4)
    ax = fig.add_subplot(1, 1, 1)
    if ctx.task == "classification":
        labels = ys.long().numpy()
        classes = np.unique(labels)
        cmap_name = "tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else None
        if cmap_name is not None:
            import matplotlib

            cmap = matplotlib.colormaps[cmap_name]
            for i, c in enumerate(classes):
                sel = labels == c
                ax.scatter(emb[sel, 0], emb[sel, 1], s=5, color=cmap(i), label=str(c),
                           alpha=0.8, linewidths=0)
            ax.legend(title="class", fontsize=7, markerscale=2.5, loc="center left",
                      bbox_to_anchor=(1.0, 0.5))
        else:
            sc = ax.scatter(emb[:, 0], emb[:, 1], c=labels, cmap="nipy_spectral", s=5,
                            linewidths=0)
            fig.colorbar(sc, ax=ax, label="class id")
        caption = f"UMAP of {len(idx)} test embeddings, coloured by class."
    else:
        target = ys.double()
        if target.ndim == 2:
            sec.notes.append(f"{target.shape[1]}-dimensional targets: coloured by the first.")
            target = target[:, 0]
        sc = ax.scatter(emb[:, 0], emb[:, 1], c=target.numpy(), cmap="viridis", s=5,
                        linewidths=0)
        fig.colorbar(sc, ax=ax, label="target")
        caption = f"UMAP of {len(idx)} test embeddings, coloured by the regression target."
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{ctx.cfg.name}: test embeddings (UMAP)")
    fig.tight_layout()
    _add_figure(ctx, sec, "umap.png", caption, fig)
    return sec


def _call_augment(aug: Callable[..., Tensor], x: Tensor, gen: torch.Generator) -> Tensor:
    """``aug(x, generator=gen)``, or ``aug(x)`` for an augmentation without that argument."""
    import inspect

    try:
        params = dict(inspect.signature(aug).parameters)
    except (TypeError, ValueError):  # no introspectable signature
        params = {}
    takes_gen = "generator" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )
    return aug(x, generator=gen) if takes_gen else aug(x)


def _load_listed(ctx: _Context, name: str, what: str, sec: _Section) -> dict[str, Any] | None:
    """A file listed in ``artifacts.json``, read weights only; ``None`` (and a note saying
    why) when it cannot be read."""

    path = ctx.run_dir / name
    if not path.is_file():
        sec.notes.append(f"artifacts.json lists the {what} {name}, but the file is missing.")
        return None
    try:
        return load_state_file(path)
    except ContrastmixError as e:
        sec.notes.append(f"the {what} ({name}) is unusable: {str(e).splitlines()[0]}")
        return None


def _load_strict(module: nn.Module, state: dict[str, Any], what: str, name: str,
                 sec: _Section, fallback: str) -> bool:
    """``module.load_state_dict(state, strict=True)``; a note (ending in ``fallback``) and
    ``False`` when the file does not match."""
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        sec.notes.append(f"the {what} ({name}) does not match the recipe ({first}): {fallback}.")
        return False
    return True


def _synthetic_spec(spec: Any, sec: _Section) -> tuple[tuple[int, int, int], int | None] | None:
    """``((N, s, s'), from_epoch)`` of ``artifacts.json``'s ``synthetic_negatives``, or ``None``
    (and a note) when malformed."""
    try:
        keys = ("num_hard", "num_mix", "num_query_mix")
        vals = [spec[k] for k in keys]
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in vals) or (
                vals[0] < 1):
            raise ValueError
        start = spec.get("from_epoch")
        if start is not None and (isinstance(start, bool) or not isinstance(start, int)):
            raise ValueError
    except (KeyError, TypeError, ValueError, AttributeError):
        sec.notes.append(f"artifacts.json: malformed synthetic_negatives {spec!r} (want "
                         "{'num_hard': N >= 1, 'num_mix': s >= 0, 'num_query_mix': s' >= 0, "
                         "'from_epoch': E}): no synthetic negatives.")
        return None
    return (vals[0], vals[1], vals[2]), start


def _section_similarities(ctx: _Context) -> _Section:
    sec = _Section("similarities", "Positive and negative similarities")
    data = ctx.feats["data"] if ctx.feats else ctx.data
    cfg = ctx.cfg
    if data.batch_augment is None:
        sec.notes.append("the loader yields PIL views (batch_augment is None): no on-device "
                         "augmentation to draw the two views from, so no histogram.")
        return sec
    art = ctx.artifacts
    fallback = "similarities of online backbone features, in-batch negatives"
    if ctx.artifacts_problem:
        sec.notes.append(f"{ctx.artifacts_problem}: {fallback}.")
    elif not (ctx.run_dir / ARTIFACTS_FILE).is_file():
        sec.notes.append(f"no {ARTIFACTS_FILE} in the run directory (a run written before "
                         "runs listed their artefacts): projector, key encoder and queue are "
                         f"unknown; {fallback}.")
    elif art.projector is None:
        sec.notes.append(f"the run's {ARTIFACTS_FILE} lists no projector: {fallback}.")
    backbone = copy.deepcopy(load_backbone(ctx.run_dir, cfg, data.in_channels))
    query_enc: nn.Module = backbone
    space = "backbone features"
    if art.projector is not None:
        proj_state = _load_listed(ctx, art.projector, "projector", sec)
        if proj_state is not None:
            mc = cfg.model
            proj = build_projector(int(backbone.output_dim),  # type: ignore[arg-type]
                                   mc.proj_hidden_dim, mc.proj_output_dim,
                                   batch_norm=bool(mc.get("proj_batch_norm", False)))
            if _load_strict(proj, proj_state, "projector", art.projector, sec, fallback):
                query_enc = nn.Sequential(backbone, proj)
                space = "projector embeddings"
    key_enc = query_enc
    key_desc = "online encoder (the run lists no momentum encoder)"
    if art.key_encoder is not None and space == "projector embeddings":
        key_state = _load_listed(ctx, art.key_encoder, "key encoder", sec)
        if key_state is not None:
            candidate = copy.deepcopy(query_enc)
            if _load_strict(candidate, key_state, "key encoder", art.key_encoder, sec,
                            "keys from the online encoder"):
                key_enc = candidate
                key_desc = "momentum (key) encoder"
    queue: Tensor | None = None
    if art.queue is not None and space == "projector embeddings":
        qstate = _load_listed(ctx, art.queue, "queue", sec)
        feats = None if qstate is None else qstate.get("features")
        dim = int(cfg.model.proj_output_dim)
        if qstate is None:
            pass
        elif not (isinstance(feats, Tensor) and feats.ndim == 2 and feats.shape[1] == dim
                  and feats.is_floating_point()):
            sec.notes.append(f"the queue ({art.queue}) does not hold {{'features': "
                             f"Tensor[K, {dim}]}}: in-batch negatives.")
        elif feats.shape[0] == 0:
            sec.notes.append(f"the queue ({art.queue}) is empty: in-batch negatives.")
        else:
            queue = feats.float()
    synthetic: tuple[int, int, int] | None = None
    if art.synthetic_negatives is not None and space == "projector embeddings":
        spec = _synthetic_spec(art.synthetic_negatives, sec)
        if spec is None:
            pass
        elif queue is None:
            sec.notes.append("the run lists synthetic negatives but no usable queue to mix "
                             "them from: no synthetic negatives.")
        else:
            synthetic, start = spec
            trained = _epochs_trained(ctx.run_dir)
            if start is not None and trained is not None and trained <= start:
                sec.notes.append(
                    f"mixing never started in this run ({trained} epochs trained, mixing "
                    f"from epoch {start}): the synthetic histograms show what it would have "
                    "added."
                )

    test = data.test
    n = min(len(test), ctx.max_points)
    gen = torch.Generator().manual_seed(ctx.seed)
    idx = torch.randperm(len(test), generator=gen)[:n].sort().values
    bs = max(2, int(cfg.data.batch_size))
    chunks = [c for c in torch.tensor_split(idx, max(1, math.ceil(n / bs))) if len(c)]
    dev = ctx.device
    query_enc.to(dev).train()
    key_enc.to(dev).train()
    aug_gen = torch.Generator(device=dev).manual_seed(ctx.seed)
    mix_gen = torch.Generator(device=dev).manual_seed(ctx.seed + 1)
    hists: dict[str, SimilarityHistogram] = {}
    qs, ks = [], []
    n_hit = 0
    msg = (f"similarities of {n} augmented test pairs ({space}"
           + (f", queue of {queue.shape[0]}" if queue is not None else ", in-batch negatives")
           + (f", MoCHi N={synthetic[0]} s={synthetic[1]} s'={synthetic[2]}"
              if synthetic else "") + ")")
    with _step(ctx, msg), torch.no_grad():
        for c in chunks:
            x = torch.stack([test[int(i)][0] for i in c]).to(dev)
            v1 = _call_augment(data.batch_augment, x, aug_gen)
            v2 = _call_augment(data.batch_augment, x, aug_gen)
            q = unit_rows(query_enc(v1).float().reshape(len(c), -1), dim=1)
            k = unit_rows(key_enc(v2).float().reshape(len(c), -1), dim=1)
            qs.append(q.cpu())
            ks.append(k.cpu())
            sims = batch_similarities(q, k, None if queue is None else queue.to(dev),
                                      mochi=synthetic, generator=mix_gen)
            n_hit += int((sims["positive"] > sims["hardest_negative"]).sum())
            for key, val in sims.items():
                if key != "hardest_negative":
                    hists.setdefault(key, SimilarityHistogram()).add(val)
    q_all, k_all = torch.cat(qs), torch.cat(ks)
    neg_desc = (f"queue ({queue.shape[0]} keys)" if queue is not None
                else "other keys of the batch")
    if synthetic is not None:
        sec.title = "Positive, negative and synthetic-negative similarities"
    sec.intro = (
        f"Cosine similarities of L2-normalised {space} of two augmented views of {n} test "
        f"samples, as the loss sees them: query = online encoder on view 1, key = {key_desc} "
        f"on view 2. Negatives: the {neg_desc}."
        + (f" Synthetic: MoCHi mixtures of each query's N = {synthetic[0]} hardest queue "
           f"entries (s = {synthetic[1]} of two hard negatives, s' = {synthetic[2]} with the "
           "query mixed in)." if synthetic is not None else "")
        + " Encoders in training mode (batch statistics, batches of data.batch_size), on "
        "copies; views from the dataset's batch augmentation with a seeded generator."
    )
    names = {
        "positive": ("positive (same sample)", "tab:green"),
        "negative": (f"negative: {neg_desc}", "tab:gray"),
        "synthetic_type1": ("synthetic type 1 (two hard negatives)", "tab:orange"),
        "synthetic_type2": ("synthetic type 2 (query + hard negative)", "tab:red"),
    }
    fig = _new_figure(7.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for key, (label, color) in names.items():
        h = hists.get(key)
        if h is None or h.total == 0:
            continue
        dens, edges = h.density(h.auto_merge())
        ax.stairs(dens, edges, color=color, linewidth=1.5, label=f"{label}, mean {h.mean:.3f}")
        ax.stairs(dens, edges, color=color, alpha=0.15, fill=True)
    ax.set_xlim(-1, 1)
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(f"{cfg.name}: similarities of {n} test queries")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _add_figure(ctx, sec, "similarities.png",
                f"Histograms of cosine similarities ({space}); query: online encoder, key: "
                f"{key_desc}; negatives: {neg_desc}.", fig)
    rows: list[tuple[str, Any]] = [(names[k][0] + " — mean", h.mean)
                                   for k, h in hists.items() if k in names and h.total]
    rows.append((f"share of queries whose positive beats every negative of the {neg_desc}",
                 n_hit / max(n, 1)))
    sec.tables.append(_table(rows))
    align = float(alignment(q_all, k_all))
    uni = float(uniformity(q_all, max_samples=ctx.max_points, generator=gen))
    ctx.metrics.append(("alignment (positive pairs)", _fmt(align),
                        f"mean ||q - k||^2 of {space}, two augmented views"))
    ctx.metrics.append(("uniformity (embedding)", _fmt(uni), f"t = 2, queries ({space})"))
    return sec


def _epochs_trained(run_dir: Path) -> int | None:
    try:
        return int(json.loads((run_dir / "run.json").read_text())["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _geometry_values(x: Tensor, y: Tensor, max_points: int, seed: int) -> dict[str, float]:
    """Uniformity, effective rank and (integer labels, >= 2 classes) NC1/NC2 of ``x``."""

    vals: dict[str, float] = {}
    if x.shape[0] >= 2:
        gen = torch.Generator().manual_seed(seed)
        vals["uniformity"] = float(uniformity(x, max_samples=max_points, generator=gen))
    if x.numel():
        vals["effective rank"] = float(effective_rank(x))
    integer = not (y.is_floating_point() or y.is_complex()) and y.ndim == 1
    if integer and torch.unique(y).numel() >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nc = neural_collapse(x, y)
        vals["NC1"] = float(nc["nc1"])
        vals["NC2 equinorm"] = float(nc["nc2_equinorm"])
        vals["NC2 equiangular"] = float(nc["nc2_equiangular"])
    return vals


def _section_epochs(ctx: _Context) -> _Section:
    sec = _Section(
        "epochs", "Geometry and collapse across epochs",
        "From the per-epoch feature files RUN_DIR/features/epoch_<E>.pt "
        "({'features': [N, d], 'labels': [N]}).",
    )
    entries, problems = load_epoch_features(ctx.run_dir)
    for p in problems:
        sec.notes.append(f"skipped {p}")
    if not entries:
        sec.notes.append("this run saved no per-epoch features (RUN_DIR/features/epoch_<E>.pt "
                         "with {'features': Tensor[N, d], 'labels': Tensor[N]}), so the "
                         "geometry is shown for the final model only (Metrics table).")
        return sec
    curves: dict[str, list[tuple[int, float]]] = {}
    with _step(ctx, f"geometry of {len(entries)} per-epoch feature files"):
        for epoch, x, y in entries:
            for k, v in _geometry_values(x, y, ctx.max_points, ctx.seed).items():
                curves.setdefault(k, []).append((epoch, v))
    ncol = min(3, len(curves))
    nrow = math.ceil(len(curves) / ncol)
    fig = _new_figure(4.2 * ncol, 3.2 * nrow)
    for i, (name, pts) in enumerate(curves.items()):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if name == "NC1" and all(p[1] > 0 and math.isfinite(p[1]) for p in pts):
            ax.set_yscale("log")
    fig.tight_layout()
    _add_figure(ctx, sec, "epoch_geometry.png",
                "Per-epoch " + ", ".join(curves) + f" ({len(entries)} epochs).", fig)
    rows = [(e, *(dict(curves[k]).get(e, math.nan) for k in curves)) for e, _, _ in entries]
    sec.tables.append(_table(rows, ("epoch", *curves)))
    return sec


# --------------------------------------------------------------------------------------------
# Page
# --------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;
background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:1.5em 2em 4em}
h1{margin-bottom:.2em} .sub{color:#666;margin-top:0}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:.6em 1.4em 1.2em;
margin:1.2em 0}
nav a{margin-right:1em}
figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
td,th{border:1px solid #ddd;padding:.25em .7em;text-align:left;vertical-align:top}
th{background:#f3f3f3} td:nth-child(2){font-variant-numeric:tabular-nums}
.note{background:#fff8e1;border-left:4px solid #f0c040;padding:.4em .8em;margin:.5em 0}
.error{background:#fdecea;border-left-color:#d9534f}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}
"""


def _render(ctx: _Context, sections: list[_Section], elapsed: float) -> str:
    cfg = ctx.cfg
    esc = html.escape
    nav = " ".join(f'<a href="#{s.key}">{esc(s.title)}</a>' for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>contrastmix report: {esc(str(cfg.name))}</title>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>contrastmix report: {esc(str(cfg.name))}</h1>",
        f'<p class="sub">{esc(str(cfg.method.name))} on {esc(str(cfg.data.name))} · '
        f"{esc(str(ctx.run_dir))} · generated {esc(time.strftime('%Y-%m-%d %H:%M'))} "
        f"in {elapsed:.1f} s</p>",
        f"<nav>{nav}</nav>",
    ]
    for s in sections:
        parts.append(f'<section id="{esc(s.key)}"><h2>{esc(s.title)}</h2>')
        if s.intro:
            parts.append(f"<p>{esc(s.intro)}</p>")
        for err in s.errors:
            parts.append(f'<p class="note error">Failed: {esc(err)}</p>')
        for note in s.notes:
            parts.append(f'<p class="note">{esc(note)}</p>')
        for t in s.tables:
            parts.append(t)
        for fg in s.figures:
            b64 = base64.b64encode(fg.png).decode("ascii")
            stem = Path(fg.name).stem
            parts.append(
                f'<figure><img id="fig-{esc(stem)}" src="data:image/png;base64,{b64}" '
                f'alt="{esc(fg.caption)}"><figcaption>{esc(fg.caption)} '
                f'(<a href="{esc(fg.name)}">{esc(fg.name)}</a>)</figcaption></figure>'
            )
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts)


def _describe(e: BaseException) -> str:
    """``Type: first line of the message``."""
    return f"{type(e).__name__}: {e}".splitlines()[0]


def _guard(ctx: _Context, key: str, title: str, build: Callable[[], _Section]) -> _Section:
    """Run a section builder; an unexpected failure becomes an error note, never a crash."""
    try:
        return build()
    except Exception as e:  # the report must still be written
        msg = _describe(e)
        ctx.log(f"section '{title}' failed: {msg}")
        return _Section(key, title, errors=[msg])


def write_report(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    max_points: int = 2000,
    seed: int = 0,
    device: str | torch.device | None = None,
    log: Callable[[str], None] | None = None,
    overrides: Sequence[str] | None = None,
    progress_bar: bool | str | None = "auto",
) -> Path:
    """Write ``report.html`` and its PNG figures for a finished run (see the module docstring).

    Args:
        run_dir: A finished run directory (``config.yaml`` and ``backbone.pt``).
        out_dir: Output folder (default ``RUN_DIR/report``); created if needed.
        max_points: Test samples used by the UMAP, the similarity histograms and the
            uniformity estimates (a seeded random subset when the split is larger).
        seed: Seed of every subsample, view augmentation and MoCHi draw.
        device: Device of the forward passes (default: CUDA when available, else CPU).
        log: Progress callback (default ``print`` with a ``[report]`` prefix).
        overrides: ``data.*`` / ``eval.*`` ``KEY=VALUE`` items for this evaluation (e.g.
            ``data.root=LABELLED_DIR``; see :func:`contrastmix.runs.load_run`).
        progress_bar: Bars for the feature extraction on stderr: ``True`` / ``False``, or
            ``"auto"`` (when stderr is a terminal).

    Returns:
        The path of ``report.html``.

    Raises:
        RunDirError: ``run_dir`` is not a finished run directory, or ``out_dir`` cannot be
            created.
        ContrastmixError: a ``device`` that is unknown or not available.
        ValueError: ``max_points < 4``.
    """

    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 4:
        raise ValueError(f"`max_points` must be an int >= 4, got {max_points!r}")
    t0 = time.time()
    say = log if log is not None else (lambda msg: print(f"[report] {msg}", flush=True))
    run = Path(run_dir)
    cfg = load_run(run, overrides)
    out = Path(out_dir) if out_dir is not None else run / "report"
    dev = resolve_device(device)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot write the report to {out}: {e.strerror or e}") from None
    ctx = _Context(run, out, cfg, max_points, seed, dev, say, overrides=list(overrides or []))
    try:
        ctx.artifacts = read_artifacts(run)
    except RunDirError as e:  # an edited or foreign artifacts.json: the report still renders
        ctx.artifacts_problem = str(e).splitlines()[0]
        say(ctx.artifacts_problem)
    say(f"run {run} ({cfg.method.name} on {cfg.data.name}); writing to {out}")
    data = None
    data_error = ""
    try:
        data = build_data(cfg.data)
        ctx.data, ctx.task = data, data.task
    except Exception as e:  # e.g. a dataset folder that moved since training
        ctx.task = "unknown"
        data_error = f"cannot build the run's dataset: {_describe(e)}"
        say(data_error)
    if data is not None and data.extras and data.extras.get("unlabelled"):
        data_error = f"cannot evaluate: {data.extras['unlabelled']}"  # e.g. unlabelled images
        say(data_error)
        data = ctx.data = None

    sections = [_guard(ctx, "run", "Run", lambda: _section_run(ctx)),
                _guard(ctx, "curves", "Training curves", lambda: _section_curves(ctx))]
    metrics = _Section("metrics", "Metrics", "Frozen backbone (eval mode), test-time inputs, "
                       "features extracted once; linear probe as in docs/methods.md §9.")
    embedding: list[_Section] = []
    probe: dict[str, Any] | None = None
    rel: Path | None = None
    if data is None:
        metrics.errors.append(data_error + "; the embedding sections are omitted.")
    elif data.task == "multimodal":
        note = ("multimodal run: the embedding sections (UMAP, similarities, probe, geometry) "
                "apply to single-backbone runs; use `contrastmix probe` for retrieval, "
                "zero-shot and calibration metrics.")
        metrics.notes.append(note)
    else:
        try:
            with _step(ctx, f"extracting backbone features of the train and test splits on {dev}"):
                ctx.feats = extract_run_features(run, dev, cfg=cfg, data=data,
                                                 progress_bar=progress_bar)
            ctx.log(f"features {tuple(ctx.feats['train_x'].shape)} train, "
                    f"{tuple(ctx.feats['test_x'].shape)} test")
        except Exception as e:
            metrics.errors.append(f"feature extraction: {_describe(e)}")
            ctx.log(f"feature extraction failed: {_describe(e)}")
        if ctx.feats is not None:
            try:
                probe, rel = _run_probe(ctx)
            except Exception as e:
                metrics.errors.append(f"linear probe: {_describe(e)}")
                ctx.log(f"linear probe failed: {_describe(e)}")
            try:
                _metrics_rows(ctx, probe)
            except Exception as e:
                metrics.errors.append(f"metrics: {_describe(e)}")
                ctx.log(f"metrics failed: {_describe(e)}")
            embedding.append(_guard(ctx, "umap", "UMAP of test embeddings",
                                    lambda: _section_umap(ctx)))
            embedding.append(_guard(ctx, "similarities", "Similarities",
                                    lambda: _section_similarities(ctx)))
    embedding.append(_guard(ctx, "epochs", "Geometry and collapse across epochs",
                            lambda: _section_epochs(ctx)))
    if data is not None and data.task != "multimodal":
        embedding.append(_guard(ctx, "reliability", "Reliability diagram",
                                lambda: _probe_section(ctx, probe, rel)))
    if ctx.metrics:
        metrics.tables.append(_table(ctx.metrics, ("metric", "value", "how")))
    sections += [metrics, *embedding]
    page = _render(ctx, sections, time.time() - t0)
    path = out / "report.html"
    write_text(path, page)
    n_fig = sum(len(s.figures) for s in sections)
    say(f"wrote {path} ({n_fig} figures, {len(page) / 1e6:.1f} MB) in {time.time() - t0:.1f} s")
    return path
